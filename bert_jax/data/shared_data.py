"""Where the project's real test and benchmark data lives (never copied into the repository).

Resolution order: $BERT_JAX_TEST_DATA; `../shared/data` beside this checkout; and, for a clone
made elsewhere (a CI checkout in a temporary folder), `../shared/data` beside the local
repository it was cloned from.
"""

import functools
import os
import pathlib
import subprocess

ENV_VAR = "BERT_JAX_TEST_DATA"
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _beside(repo: pathlib.Path) -> pathlib.Path:
    return repo.parent / "shared" / "data"


@functools.cache
def _origin_checkout() -> pathlib.Path | None:
    """The local folder this checkout was cloned from, when it was cloned from a local path."""
    try:
        url = subprocess.run(["git", "-C", str(_REPO_ROOT), "config", "--get", "remote.origin.url"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    url = url.removeprefix("file://")
    return pathlib.Path(url) if url and os.path.isdir(url) else None


def shared_data_dir() -> pathlib.Path:
    """The staged-data folder (see the module docstring); the first candidate if none exists."""
    configured = os.environ.get(ENV_VAR)
    if configured:
        return pathlib.Path(configured)
    candidates = [_beside(_REPO_ROOT)]
    origin = _origin_checkout()
    if origin is not None:
        candidates.append(_beside(origin.resolve()))
    return next((c for c in candidates if c.is_dir()), candidates[0])


def shared_data_path(*parts: str) -> pathlib.Path:
    """A file or folder under the staged-data folder; raises a clear error when it is absent."""
    path = shared_data_dir().joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: set {ENV_VAR} to the staged data folder (see its MANIFEST.md)"
        )
    return path
