"""Helpers shared by the tests of imagenette/v2 ... v5 (on top of imagenette_helpers.py).

`normalize` is a version module from v2 on, but conftest's VERSION_MODULES does not list
it: without `forget_normalize`, the first version imported would lend its normalize.py
to every later one. The autouse fixtures below forget it before each module's runs and
around each test, so every version imports its own copy.
"""
from __future__ import annotations

import io
import contextlib
import json
import sys

import pytest
import torch

from fmnist_helpers import VersionContext, read_jsonl
from imagenette_helpers import quick_args

TIMING_KEYS = {"seconds", "train_seconds", "images_per_second"}
PNG_COMMON = ["first_batch.png", "class_balance.png", "training_curves.png", "augmented_batch.png"]


def forget_normalize() -> None:
    sys.modules.pop("normalize", None)


@pytest.fixture(scope="module", autouse=True)
def _fresh_normalize_for_the_module():
    forget_normalize()
    yield
    forget_normalize()


@pytest.fixture(autouse=True)
def _fresh_normalize_for_each_test():
    forget_normalize()
    yield
    forget_normalize()


def quiet_quick_run(version: str, data_dir, out, *extra) -> tuple[dict, str]:
    """quick_run with stdout and stderr (the progress bars) captured; returns (results, stdout)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    forget_normalize()
    with VersionContext(version) as train, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        results = train.main(quick_args(data_dir, out, *extra))
    forget_normalize()
    return results, stdout.getvalue()


def quiet_run(version: str, argv: list[str]) -> tuple[dict, str]:
    """main(argv) of `version` with stdout and stderr captured; returns (results, stdout)."""
    stdout, stderr = io.StringIO(), io.StringIO()
    forget_normalize()
    with VersionContext(version) as train, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        results = train.main(argv)
    forget_normalize()
    return results, stdout.getvalue()


def history_numbers(out) -> list[dict]:
    """history.jsonl without the timing keys: what the same seed must repeat exactly."""
    return [{k: v for k, v in line.items() if k not in TIMING_KEYS} for line in read_jsonl(out / "history.jsonl")]


def check_numbers(results: dict) -> dict:
    return {name: (c["passed"], c["value"], json.dumps(c["details"], sort_keys=True))
            for name, c in results["checks"].items()}


def assert_completed_with_checks(results: dict, names: list[str]) -> None:
    """status completed, exit 0, exactly these checks in this order, every one passed."""
    assert results["status"] == "completed" and results["exit_code"] == 0
    assert list(results["checks"]) == names
    failed = [n for n, c in results["checks"].items() if not c["passed"]]
    assert failed == [] and results["all_checks_passed"] is True, failed


def load_quick_data(train, data_dir, out, *extra):
    """cfg and Data of a --quick run of the loaded version (the decoded images come from the cache)."""
    cfg = train.parse_args(quick_args(data_dir, out, *extra))
    with contextlib.redirect_stderr(io.StringIO()):
        data = train.load_data(cfg, torch.device("cpu"))
    return cfg, data
