"""Throughput accounting: the datasheet peaks MFU is measured against."""

import types

import jax
import pytest

from bert_jax.train import metrics


def _device(kind: str):
    return types.SimpleNamespace(device_kind=kind)


@pytest.mark.parametrize("kind, dtype, expected", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989e12),
    # JAX's default precision runs float32 matmuls as TF32 on Ampere and newer GPUs: against
    # the float32 peak (67e12) an H100 would report MFU above 1.
    ("NVIDIA H100 80GB HBM3", "float32", 495e12),
    ("NVIDIA H200", "float32", 495e12),
    ("NVIDIA A100-SXM4-40GB", "float32", 156e12),
    ("Tesla V100-SXM2-16GB", "float32", 15.7e12),  # no TF32 before the A100
    ("TPU v4", "float32", 275e12),  # one bfloat16 pass
    ("TPU v4", "float16", None),
    ("cpu", "float32", None),
])
def test_datasheet_peak_at_the_default_precision(kind, dtype, expected):
    assert metrics.datasheet_peak(dtype, _device(kind)) == expected


def test_datasheet_peak_follows_the_matmul_precision():
    h100, tpu = _device("NVIDIA H100 80GB HBM3"), _device("TPU v5p")
    with jax.default_matmul_precision("highest"):
        assert metrics.datasheet_peak("float32", h100) == 67e12
        assert metrics.datasheet_peak("float32", tpu) is None  # several passes: unknown
        assert metrics.datasheet_peak("bfloat16", h100) == 989e12  # not a float32 matmul
    with jax.default_matmul_precision("tensorfloat32"):
        assert metrics.datasheet_peak("float32", h100) == 495e12
        assert metrics.datasheet_peak("float32", tpu) is None  # three bfloat16 passes
    with jax.default_matmul_precision("bfloat16"):
        assert metrics.datasheet_peak("float32", tpu) == 459e12
