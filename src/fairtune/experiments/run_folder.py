"""The output-folder protocol of ``fairtune run`` and ``fairtune sweep``.

- A folder that already holds results is refused unless ``overwrite`` (``--overwrite``) is
  given; a folder holding files fairtune did not write is always refused (it would be deleted).
- A lock file next to the folder (``.NAME.lock``, ``flock``) keeps two runs from writing it at
  once; the kernel releases it when a process dies, even by SIGKILL.
- A run writes its files into a staging folder next to the target and swaps it in at the end
  (``renameat2(RENAME_EXCHANGE)`` where the system has it, else two renames that the next run
  repairs), so a run killed at any point leaves either the old folder intact or the new one
  complete; with ``overwrite`` the folder then holds exactly one run's files.
- Nothing is created before the checks pass, and files get the normal permissions (umask).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from .._io import default_mode
from ..errors import FairtuneError

#: What ``fairtune run`` writes; anything else in its folder is the user's.
RUN_FILES = frozenset({"results.csv", "summary.csv", "summary.md", "selections.json", "config.json", "predictions.csv"})
#: What ``fairtune sweep`` writes.
SWEEP_FILES = frozenset({"sweep.json", "results.csv", "units"})

HOLDS_RESULTS = "{path} already holds the results of an earlier run; pass --overwrite to replace them, or choose another --out"
HOLDS_OTHER_SWEEP = (
    "{path} holds a different sweep (its sweep.json differs); pass --overwrite to replace it, "
    "or rerun the same config to resume it"
)
FOREIGN_FILES = "{path} holds files that fairtune did not write ({names}); choose an empty or new folder for --out"
NOT_A_FOLDER = "output {path} exists and is not a folder"
LOCKED = "another fairtune process is writing to {path}; wait for it to finish or choose another --out"
NOT_WRITABLE = "output directory {path} is not writable: {reason}"

T = TypeVar("T")
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _entries(path: Path) -> list[str]:
    return sorted(entry.name for entry in path.iterdir())


def check_target(path: Path, *, known: frozenset[str]) -> list[str]:
    """The entries of the output folder ``path`` (none if it does not exist); refuse a file or foreign entries."""
    if not path.exists():
        return []
    if not path.is_dir():
        raise FairtuneError(NOT_A_FOLDER.format(path=path))
    entries = _entries(path)
    foreign = [name for name in entries if name not in known]
    if foreign:
        raise FairtuneError(FOREIGN_FILES.format(path=path, names=", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")))
    return entries


def check_run_target(path: Path, *, overwrite: bool) -> None:
    """A run's folder: new, empty, or (with ``overwrite``) an earlier run's."""
    if check_target(path, known=RUN_FILES) and not overwrite:
        raise FairtuneError(HOLDS_RESULTS.format(path=path))


@contextlib.contextmanager
def folder_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (``.NAME.lock`` in its parent) or fail at once with :data:`LOCKED`.

    The lock file is removed when the lock is released (a killed process leaves it, unlocked, for
    the next run to reuse). A process that locked a file which was removed meanwhile holds
    nothing, so it checks that its file is still the one at the path.
    """
    lock = path.parent / f".{path.name}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(lock, os.O_RDWR | os.O_CREAT, default_mode(0o666))
    except OSError as exc:
        raise FairtuneError(NOT_WRITABLE.format(path=path, reason=exc.strerror)) from exc
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(handle).st_ino != os.stat(lock).st_ino:
                raise BlockingIOError
        except (BlockingIOError, FileNotFoundError):
            raise FairtuneError(LOCKED.format(path=path)) from None
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)  # while still locked: nobody can hold the lock on a removed file
    finally:
        os.close(handle)  # closing releases the lock


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2``); False where the system cannot."""
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(first))


def _leftovers(path: Path, kind: str) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}.{kind}-*"))


def recover(path: Path) -> None:
    """Repair what a killed run left next to ``path`` (call under the lock).

    A run killed between the two renames of the fallback swap left no ``path`` and the old
    folder as ``.NAME.old-*``: put it back. Staging and old folders are then removed.
    """
    old = _leftovers(path, "old")
    if old and not path.exists():
        os.rename(old[-1], path)
    for leftover in _leftovers(path, "old") + _leftovers(path, "staging"):
        shutil.rmtree(leftover, ignore_errors=True)


def swap_in(staging: Path, path: Path) -> None:
    """Make ``staging`` the folder ``path``; the replaced folder (if any) is removed afterwards."""
    if not path.exists():
        os.rename(staging, path)
        return
    if _exchange(staging, path):
        shutil.rmtree(staging)  # it now holds the old folder
        return
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    os.rename(path, old)  # killed here: recover() renames it back
    os.rename(staging, path)
    shutil.rmtree(old)


class RunFolder:
    """``with RunFolder(out, overwrite=...) as folder: ...; folder.commit(write)``.

    Entering checks the target and takes the lock; ``commit(write)`` calls ``write(staging)``
    to fill a fresh staging folder and swaps it in. Leaving without a commit (an error, an
    interrupt) removes the staging folder and leaves ``out`` as it was.
    """

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        self.path = Path(os.path.abspath(path))  # "." has no name to put a lock or staging folder beside
        self.overwrite = overwrite
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> RunFolder:
        check_run_target(self.path, overwrite=self.overwrite)  # before creating anything
        with self._stack:
            self._stack.enter_context(folder_lock(self.path))
            recover(self.path)
            check_run_target(self.path, overwrite=self.overwrite)  # a concurrent run may have finished
            self._stack = self._stack.pop_all()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stack.close()

    def commit(self, write: Callable[[Path], T]) -> T:
        """Write the run's files with ``write(folder)`` into a staging folder, swap it in as ``out``; return what ``write`` returns."""
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.staging-", dir=self.path.parent))
        except OSError as exc:
            raise FairtuneError(NOT_WRITABLE.format(path=self.path, reason=exc.strerror)) from exc
        try:
            os.chmod(staging, default_mode(0o777))
            written = write(staging)
            swap_in(staging, self.path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return written


def check_sources(datasets: dict[str, Any]) -> None:
    """:func:`~fairtune.data.check_source` for each data set of a sweep, the error naming the data set."""
    from ..data import check_source, dataset_errors

    for name, data in datasets.items():
        with dataset_errors(name):
            check_source(data)


def _same_sweep(recorded: dict[str, Any], current: dict[str, Any]) -> bool:
    """Whether two sweep configs (as in sweep.json) describe the same grid; the output folder does not count."""
    strip = lambda config: {k: v for k, v in config.items() if k not in ("out", "cache_dir")}  # noqa: E731
    return strip(recorded) == strip(current)


@contextlib.contextmanager
def sweep_folder(path: str | os.PathLike[str], config: dict[str, Any], *, overwrite: bool = False) -> Iterator[Path]:
    """Hold ``path`` for a sweep of ``config`` (its JSON dump): same grid resumes, another grid is refused.

    With ``overwrite`` an earlier sweep's files (``sweep.json``, ``results.csv``, ``units/``) are
    removed first. The lock is held until the block ends.
    """
    out = Path(os.path.abspath(path))

    def check() -> None:
        if not check_target(out, known=SWEEP_FILES) or overwrite:
            return
        recorded = out / "sweep.json"
        try:
            same = _same_sweep(json.loads(recorded.read_text())["sweep"], config)
        except (OSError, ValueError, KeyError, TypeError):
            same = False
        if not same:
            raise FairtuneError(HOLDS_OTHER_SWEEP.format(path=out))

    check()
    with folder_lock(out):
        check()
        if overwrite and out.is_dir():
            for name in SWEEP_FILES:
                target = out / name
                shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        yield out
