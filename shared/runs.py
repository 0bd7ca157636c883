"""Run plumbing that no lesson teaches: one folder per run, atomic writes, Ctrl-C.

Every version imports these, so that a fix reaches all of them at once:

* ``make_run_dir``: each run writes into a new folder of its own under the
  version's ``outputs/``, named so that runs sort by time and the mode shows
  (``outputs/2026-12-04_14-03-11-quick/``; a clash adds ``-2``, ``-3``, never
  overwrites), and ``outputs/latest`` names the newest. ``--out DIR`` is
  exactly that folder; a folder that already holds a run's results is refused
  unless ``--resume`` or ``--overwrite`` says so. This is what Lightning's
  ``lightning_logs/version_N`` and Hydra's dated output folders do.
* ``write_json``, ``write_text``, ``save_figure``: write to a hidden temporary
  file, then rename, so an interrupted run never leaves a half-written file;
  every file in a run folder is complete.
* ``stop_cleanly``: Ctrl-C anywhere in a run gives one short message, exit
  code 130, and a results.json that says ``interrupted`` and lists the files
  that are complete. SIGTERM (``kill``, ``timeout``, a cluster's preemption)
  is handled the same way: it arrives as ``Terminated``, a KeyboardInterrupt,
  so every phase that keeps its history and checkpoints on Ctrl-C keeps them.
* ``existing_dir``: an argparse type that refuses a folder that does not exist
  before anything is created (a typo in ``--data-dir`` must not make folders).
* ``resolve_run_dir``: what tools that read runs accept: a run folder, a
  version's ``outputs/`` (its newest run), ``outputs/latest``, or a results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

LATEST = "latest"  # outputs/latest: a symlink to the newest run folder, or a text file naming it
RESULTS_FILE = "results.json"


class RunFolderError(Exception):
    """The run folder cannot be used (exists with results, not writable); the message says what to do."""


# ---------------------------------------------------------------------------
# The run folder
# ---------------------------------------------------------------------------
def run_mode(quick: bool = False, preflight: bool = False) -> str:
    """The mode in a run folder's name: full, quick, preflight or quick-preflight."""
    parts = [name for name, on in (("quick", quick), ("preflight", preflight)) if on]
    return "-".join(parts) or "full"


def _holds_results(folder: Path) -> bool:
    return (folder / RESULTS_FILE).exists() or (folder / "history.jsonl").exists()


def _check_writable(folder: Path) -> None:
    """Fail at the start, not after an hour of training, if results cannot be written."""
    probe = folder / f".write_test.{os.getpid()}"
    probe.write_text("ok")
    probe.unlink()


def make_run_dir(outputs: Path, mode: str, out: Path | None = None, *, resume: bool | None = None,
                 overwrite: bool = False, now: datetime | None = None) -> Path:
    """The folder this run writes into, created and checked writable.

    out None: a new folder ``outputs/<date>_<time>-<mode>`` (``--resume`` without
    ``--out`` takes the newest run, ``outputs/latest``). out given: exactly that
    folder; if it holds a run's results already, only ``resume`` or ``overwrite``
    may reuse it (``resume`` None: the version has no ``--resume``). ``outputs/latest``
    is pointed at the folder whenever it lies directly under ``outputs``.
    """
    outputs = Path(outputs).expanduser().resolve()
    try:
        if out is None and resume:
            if not (outputs / LATEST).exists():
                raise RunFolderError(f"--resume without --out goes on with the newest run, {outputs / LATEST}, and "
                                     "there is no run folder yet. Start without --resume, or name the run's folder "
                                     "with --out.")
            folder = resolve_run_dir(outputs / LATEST)
        elif out is None:
            folder = _new_dated_folder(outputs, mode, now or datetime.now())
        else:
            folder = Path(out).expanduser().resolve()
            if folder.exists() and not folder.is_dir():
                raise RunFolderError(f"cannot write to output folder {folder}: it is a file. Choose another with --out.")
            if _holds_results(folder) and not (resume or overwrite):
                raise RunFolderError(
                    f"{folder} already holds a run's results ({RESULTS_FILE}); this run would overwrite them. "
                    "Leave --out away for a new folder of its own, or add --overwrite"
                    + (" (or --resume to go on with that run)" if resume is not None else "") + ".")
            folder.mkdir(parents=True, exist_ok=True)
        _check_writable(folder)
    except OSError as err:
        raise RunFolderError(f"cannot write to output folder {err.filename or outputs}: {err.strerror or err}. "
                             "Choose another with --out.") from None
    if folder.parent == outputs:
        point_latest(outputs, folder)
    return folder


def _new_dated_folder(outputs: Path, mode: str, now: datetime) -> Path:
    """outputs/2026-12-04_14-03-11-quick, or -quick-2, -quick-3 ... if that name is taken."""
    outputs.mkdir(parents=True, exist_ok=True)
    base = f"{now:%Y-%m-%d_%H-%M-%S}-{mode}"
    for attempt in range(1, 1000):
        folder = outputs / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            folder.mkdir()  # exclusive: two runs started in the same second never share a folder
            return folder
        except FileExistsError:
            continue
    raise RunFolderError(f"could not find a free folder name under {outputs} for {base}")


def point_latest(outputs: Path, folder: Path) -> None:
    """outputs/latest -> folder: a relative symlink, swapped in atomically; a text file where
    the OS has no symlinks (Windows without developer mode)."""
    link = outputs / LATEST
    tmp = outputs / f".{LATEST}.{os.getpid()}.tmp"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(folder.name, tmp, target_is_directory=True)
    except (OSError, NotImplementedError):
        write_text(link, folder.name + "\n") if not link.is_symlink() else None
        return
    os.replace(tmp, link)  # a plain file or an older link named latest is replaced in one step


def resolve_run_dir(path: str | os.PathLike) -> Path:
    """A run folder from what a user types: the folder itself, a results.json in it, a version's
    outputs/ (its newest run) or outputs/latest (a symlink or a text file naming the folder)."""
    path = Path(path).expanduser()
    if path.is_file() and path.name == RESULTS_FILE:
        return path.parent.resolve()
    if path.name == LATEST and path.is_file() and not path.is_symlink():
        return (path.parent / path.read_text().strip()).resolve()
    if path.is_dir() and not (path / RESULTS_FILE).exists() and (path / LATEST).exists():
        return resolve_run_dir(path / LATEST)
    if path.is_dir():
        return path.resolve()
    raise RunFolderError(f"no run folder at {path} (give a run folder, a results.json, or outputs/ for the newest)")


# ---------------------------------------------------------------------------
# Atomic writes: a hidden temporary file, then a rename
# ---------------------------------------------------------------------------
def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")


def write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = _temporary(path)
    tmp.write_text(text)
    tmp.replace(path)  # atomic: an interrupted write never leaves a half file


def write_json(path: Path, data: dict, **dump_options) -> None:
    """results.json and the like, atomically."""
    write_text(path, json.dumps(data, indent=2, **dump_options) + "\n")


def save_figure(fig, path: Path, **savefig_options) -> None:
    """fig.savefig, atomically: a plot is either whole or absent."""
    path = Path(path)
    tmp = _temporary(path)
    fig.savefig(tmp, format=path.suffix.lstrip(".") or None, **savefig_options)
    tmp.replace(path)


def save_checkpoint(obj, path: Path) -> None:
    """torch.save, atomically: the best checkpoint on disk is always a whole one."""
    import torch

    path = Path(path)
    tmp = _temporary(path)
    torch.save(obj, tmp)
    tmp.replace(path)


def complete_files(folder: Path) -> list[str]:
    """The files of a run folder, without the hidden temporaries of writes cut short: every
    other file was written whole and then renamed into place, so it is complete."""
    return sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def remove_temporaries(folder: Path) -> None:
    for p in Path(folder).glob(".*.tmp*"):
        try:
            p.unlink()
        except OSError:
            pass


# ---------------------------------------------------------------------------
# Ctrl-C anywhere, and bad input
# ---------------------------------------------------------------------------
class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the run is, as Ctrl-C raises KeyboardInterrupt there. Without it a
    `kill`, a `timeout` or a scheduler's preemption ends Python at once: no results.json saying
    what happened, no history or checkpoint saved by the phase that was running."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextmanager
def stop_cleanly(run):
    """Ctrl-C anywhere inside: results.json says interrupted and lists the complete files,
    one short message on stderr, exit code 130 (128 + SIGINT, what shells report). SIGTERM
    inside (Terminated) is treated as Ctrl-C, with the same exit code, and named in the message.

    `run` has `.out` (the run folder), `.results` (the dict behind results.json) and
    `.save(**updates)` (the run's own way of writing it). A phase that stops the run itself
    (training keeps its history and checkpoint on Ctrl-C or divergence, missing data exits 2)
    raises SystemExit: it passes through, and results.json gets the same list of files.
    """
    # Only the main thread may set a signal handler; the previous one comes back on the way out.
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        yield
    except KeyboardInterrupt as stop:
        remove_temporaries(run.out)
        run.save(status="interrupted", exit_code=130, complete_files=_files_with_results(run.out))
        which = "SIGTERM" if isinstance(stop, Terminated) else "Ctrl-C"
        print(f"\nInterrupted ({which}). What was complete is kept; {RESULTS_FILE} says status 'interrupted'.\n"
              f"Run folder: {run.out}", file=sys.stderr)
        raise SystemExit(130) from None
    except SystemExit as stop:
        if stop.code:
            remove_temporaries(run.out)
            updates = {"exit_code": stop.code} if "exit_code" not in run.results else {}
            if run.results.get("status") == "running":
                updates["status"] = "failed"
            run.save(**updates, complete_files=_files_with_results(run.out))
            print(f"Run folder: {run.out}", file=sys.stderr)
        raise
    finally:
        if in_main_thread:  # None: the handler was set outside Python, and the default is the nearest
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    print(f"Run folder: {run.out}")  # the last line: where this run's files are


def _files_with_results(folder: Path) -> list[str]:
    return sorted(set(complete_files(folder)) | {RESULTS_FILE})


def existing_dir(value: str) -> Path:
    """argparse type for --data-dir: refuse a folder that does not exist before anything runs
    (a download attempt would otherwise create the mistyped path)."""
    path = Path(value).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {value}")
    return path
