"""Shared test helpers.

Every version folder has modules with the same names (train, debug_tools,
metrics, ...). `load_version` imports one version's `train.py` in isolation:
it puts the folder first on sys.path and forgets any previously imported module
of the same name, so two versions never see each other's code.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Module names that live in version folders; "ensemble" is both fashionmnist/v14-step6's and imagenette/v8's
# (a worker that imported one served it for the other: a CI failure). The scripts of one version are
# listed too, so that the next version that reuses a name cannot collide.
VERSION_MODULES = ("train", "main", "debug_tools", "metrics", "visualization", "scripts", "normalize", "models",
                   "ensemble", "import_member", "search", "speed_table", "regularize", "learning_curve",
                   "complexify", "compare_ab", "compare_runs", "summarize")


def _forget_version_modules():
    for name in list(sys.modules):
        if name.split(".")[0] in VERSION_MODULES:
            del sys.modules[name]


def load_version(folder: str | Path, module: str = "train"):
    """Import `module` from a version folder (e.g. 'fashionmnist/v10-step2')."""
    folder = (REPO_ROOT / folder).resolve()
    _forget_version_modules()
    sys.path[:] = [p for p in sys.path if not _is_version_dir(p)]
    sys.path.insert(0, str(folder))
    return importlib.import_module(module)


def _is_version_dir(path: str) -> bool:
    """A version folder: directly under a track (fashionmnist/v1) or one level deeper (imagenette/v6/v6a)."""
    p = Path(path).resolve() if path else None
    if p is None or REPO_ROOT not in p.parents:
        return False
    parts = p.relative_to(REPO_ROOT).parts
    return len(parts) in (2, 3) and parts[0] in {"fashionmnist", "imagenette", "cifar100"}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One intra-op thread for every test module.

    Measured on 2 cores: idle, two threads finish the fashionmnist tests ~20% sooner
    (2:11 vs 2:39), but when anything else runs on the machine two spinning OpenMP
    threads slow single checks down up to 25x (overfit_one_batch: 26 s instead of 1 s);
    one thread stays predictable. The cifar100 tests' tiny ResNets gain nothing from
    intra-op threads either.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def _cifar100_cache_in_a_temp_folder(tmp_path_factory):
    """cifar100's scripts/data.py caches decoded image folders; the tests' generated folders go to a
    temporary cache, never to the repository's data/ (data.py reads the variable when imported)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CIFAR100_CACHE_DIR", str(tmp_path_factory.mktemp("cifar100-cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _isolate_versions():
    """Each test starts and ends without any version module imported."""
    saved = list(sys.path)
    yield
    _forget_version_modules()
    sys.path[:] = saved


@pytest.fixture(autouse=True)
def _headless_plots(monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
