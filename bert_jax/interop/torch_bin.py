"""PyTorch `pytorch_model.bin` state dicts, read without running the code a pickle may carry.

A .bin file is a pickle: plain `torch.load` would call whatever function the file names (a
downloaded checkpoint could run `os.system`). torch's restricted unpickler (`weights_only=True`)
builds tensors and plain containers only and refuses everything else; that refusal is reported
here as an error naming the file.
"""

import io
import pickle

import numpy as np
import tensorflow as tf


def load_state_dict(path: str) -> dict:
    """name -> float32 (or integer) numpy array of the state dict at `path` (local or gs://)."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"reading {path} needs torch (pip install torch), or convert the "
                          "folder to model.safetensors") from e
    with tf.io.gfile.GFile(path, "rb") as f:
        data = io.BytesIO(f.read())
    try:
        state = torch.load(data, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"refusing to load {path}: it holds more than tensors, and unpickling "
                         f"it could run code ({_reason(e)})") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict")
    tensors = {}
    for name, value in state.items():
        if not torch.is_tensor(value):
            raise ValueError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
        tensors[name] = _numpy(value)
    return tensors


def _reason(error: Exception) -> str:
    """torch's line naming the refused global, without its advice to load unsafely instead."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if "GLOBAL" in line or "Unsupported" in line]
    return (named or lines or ["restricted unpickler refused it"])[0]


def _numpy(tensor) -> np.ndarray:
    if tensor.is_floating_point():
        tensor = tensor.float()  # numpy has no bfloat16
    return tensor.detach().numpy()
