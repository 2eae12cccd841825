"""Where the project's real test and benchmark data lives (never copied into the repository)."""

import os
import pathlib

ENV_VAR = "BERT_JAX_TEST_DATA"
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def shared_data_dir() -> pathlib.Path:
    """The staged-data folder: $BERT_JAX_TEST_DATA, else ../shared/data beside the repository."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        return pathlib.Path(configured)
    return _REPO_ROOT.parent / "shared" / "data"


def shared_data_path(*parts: str) -> pathlib.Path:
    """A file or folder under the staged-data folder; raises a clear error when it is absent."""
    path = shared_data_dir().joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: set {ENV_VAR} to the staged data folder (see its MANIFEST.md)"
        )
    return path
