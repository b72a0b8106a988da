"""Where units run: in this process, in local processes, or on a Dask cluster.

An executor is a context manager whose ``imap(function, items)`` yields ``(index, result)``
as tasks finish, in any order.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from ..errors import ConfigError

#: Environment variable naming a Dask scheduler (the ``dask`` convention).
SCHEDULER_ENV = "DASK_SCHEDULER_ADDRESS"


@contextlib.contextmanager
def _interrupts_ignored() -> Iterator[None]:
    """Ignore SIGINT in the block (processes started in it inherit that); only the main thread can."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class SerialExecutor:
    """Run tasks one after the other in this process. Executors are context managers with ``imap``."""

    #: Whether tasks run in other processes (which share the on-disk caches, not this process's memory).
    parallel: bool = False
    #: How many tasks run at once (None: as many as the cluster has room for).
    workers: int | None = 1

    def __enter__(self) -> SerialExecutor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def imap(self, function: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        """Yield ``(index, function(items[index]))`` as tasks finish."""
        for index, item in enumerate(items):
            yield index, function(item)


class ProcessExecutor(SerialExecutor):
    """Run tasks in ``processes`` local processes, spawned once per call (no state inherited from the caller)."""

    parallel = True

    def __init__(self, processes: int) -> None:
        self.processes = self.workers = processes
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> ProcessExecutor:
        with _interrupts_ignored():  # every worker starts now, with Ctrl-C ignored: this process handles it and stops them
            self._pool = ProcessPoolExecutor(max_workers=self.processes, mp_context=multiprocessing.get_context("spawn"))
            for _ in range(self.processes):
                self._pool.submit(int)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        if exc_type is not None:  # Ctrl-C or an error: stop the workers now, not after their current units
            for process in list((self._pool._processes or {}).values()):
                process.terminate()
        self._pool.shutdown(cancel_futures=True)

    def imap(self, function: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        futures = {self._pool.submit(function, item): index for index, item in enumerate(items)}
        for future in as_completed(futures):
            yield futures[future], future.result()


class DaskExecutor(SerialExecutor):
    """Run tasks on the Dask cluster at ``scheduler`` (``tcp://HOST:PORT``); its workers need fairtune installed."""

    parallel = True
    workers = None

    def __init__(self, scheduler: str) -> None:
        self.scheduler = scheduler
        self._client: Any = None

    def __enter__(self) -> DaskExecutor:
        try:
            from distributed import Client
        except ImportError:
            raise ConfigError("--scheduler needs dask's distributed package: pip install 'fairtune[dask]'") from None
        try:
            self._client = Client(self.scheduler, timeout="20s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConfigError(f"cannot connect to the Dask scheduler at {self.scheduler}: {' '.join(str(exc).split())}") from None
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._client.close()

    def imap(self, function: Callable[[Any], Any], items: Sequence[Any]) -> Iterator[tuple[int, Any]]:
        from distributed import as_completed as dask_as_completed

        futures = self._client.map(function, list(items), pure=False)
        index = {future.key: i for i, future in enumerate(futures)}
        for future in dask_as_completed(futures):
            yield index[future.key], future.result()


def choose_executor(*, processes: int = 1, scheduler: str | None = None) -> SerialExecutor:
    """Dask when a scheduler is named (argument or ``$DASK_SCHEDULER_ADDRESS``), else local processes (or this one)."""
    if processes < 1:
        raise ConfigError(f"--processes must be >= 1, got {processes}")
    scheduler = scheduler or os.environ.get(SCHEDULER_ENV) or None
    if scheduler:
        return DaskExecutor(scheduler)
    return ProcessExecutor(processes) if processes > 1 else SerialExecutor()

