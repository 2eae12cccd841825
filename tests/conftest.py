"""Shared pytest fixtures: guardrails on, real data located through one helper."""

import os

import jax
import pytest

from bert_jax.data import shared_data

jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_collection_modifyitems(items):
    """Slow tests first (in file order otherwise): with several workers (pytest -n 2, as the
    README runs the suite), a 5-minute test started last would run alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def data_dir():
    """The staged real data; skipped with a reason when absent, required under CI."""
    path = shared_data.shared_data_dir()
    if not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI requires the staged data at {path} ({shared_data.ENV_VAR})")
        pytest.skip(f"staged data not found at {path}; set {shared_data.ENV_VAR}")
    return path


# Fine-tuning fixtures shared by several modules (built once per session; read-only).


@pytest.fixture(scope="session")
def pretrained(data_dir, tmp_path_factory):
    from tests.test_finetune import pretrain_tiny

    return pretrain_tiny(data_dir, tmp_path_factory.mktemp("pretrain"))


@pytest.fixture(scope="session")
def mrpc_dir(data_dir, tmp_path_factory):
    from tests.test_finetune import mrpc_slice

    return mrpc_slice(data_dir, tmp_path_factory.mktemp("glue"))


@pytest.fixture(scope="session")
def finetuned(pretrained, mrpc_dir, tmp_path_factory):
    from tests.test_finetune import finetune_two_seeds

    return finetune_two_seeds(pretrained, mrpc_dir, tmp_path_factory.mktemp("finetune"))


def require(module_name: str):
    """Imports an optional dependency; a skip normally, a failure when BERT_JAX_REQUIRE_TORCH=1.

    CI sets the variable so parity tests cannot silently vanish when torch/transformers are missing.
    """
    if os.environ.get("BERT_JAX_REQUIRE_TORCH") == "1":
        return __import__(module_name)
    return pytest.importorskip(module_name)
