"""Atomic file output: a file is either absent, or complete.

Each writer writes to a temporary file in the destination folder and renames it over the
target (``os.replace`` is atomic on POSIX), so an interrupted run never leaves a
half-written CSV/JSON behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
from logging.handlers import MemoryHandler
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import FairtuneError

if TYPE_CHECKING:  # the CLI imports this module at start-up: keep it light
    import pandas as pd


def default_mode(mode: int) -> int:
    """``mode`` less the process umask: what ``open``/``mkdir`` would give (``tempfile`` gives 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` if the block succeeds."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise FairtuneError(f"cannot write to {target.parent}: {exc.strerror}") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, default_mode(0o666))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` if needed and check that files can be written into it."""
    directory = Path(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise FairtuneError(f"output directory {directory} is not writable: {exc.strerror}") from exc
    return directory


def write_csv(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def write_json(obj: Any, path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_text(text: str, path: str | os.PathLike[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


_NOTICES = "fairtune-notices"


def configure_logging(verbose: bool) -> None:
    """Log to stderr: with ``verbose`` everything from INFO on, at once; otherwise warnings are
    held as notices until the command ends (:func:`release_notices`), so that a command that
    fails prints its one error line and nothing else."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _NOTICES]:  # an earlier in-process command's
        root.removeHandler(handler)
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler = stream if verbose else MemoryHandler(10_000, flushLevel=logging.CRITICAL + 1, target=stream, flushOnClose=False)
    handler.set_name(_NOTICES)
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)


def release_notices(*, show: bool) -> None:
    """Print the held notices (a command succeeded) or drop them (it failed: its error line says
    what matters); either way stop holding, the command is over."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _NOTICES]:
        if isinstance(handler, MemoryHandler) and not show:
            handler.buffer.clear()
        handler.flush()
        root.removeHandler(handler)
