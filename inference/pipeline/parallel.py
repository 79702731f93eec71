"""Threads for the pipeline's NumPy and SciPy stages, within the ``threads`` a run may use.

NumPy's indexing and arithmetic and SciPy's ndimage filters release the GIL, so threads of one
process share such work across cores. A run asked for one thread (``threads=1``: a worker running
several jobs at once, one core each) keeps every stage in its own thread: :func:`executor` and
:func:`beside` then run each task at once, in the caller's thread, in the order it was given.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any


def workers_for(threads: int) -> int:
    """Threads for the NumPy and SciPy stages: the ``threads`` asked for, all cores for 0 (automatic)."""
    return threads if threads > 0 else len(os.sched_getaffinity(0))


class _InPlace(Executor):
    """An executor that runs each task as it is submitted, in the submitting thread."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:
            future.set_exception(error)
        return future


def executor(workers: int, name: str) -> Executor:
    """``workers`` threads (``ThreadPoolExecutor``), or the caller's own thread for one or fewer."""
    return ThreadPoolExecutor(workers, thread_name_prefix=name) if workers > 1 else _InPlace()


def beside(threads: int, name: str) -> Executor:
    """One thread for work that runs beside the caller's, where the run may use more than one core;
    else the caller's own thread."""
    return ThreadPoolExecutor(1, thread_name_prefix=name) if workers_for(threads) > 1 else _InPlace()
