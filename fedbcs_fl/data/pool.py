"""The process pool that decodes data files in parallel."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor


def map_jobs(function: Callable, jobs: Iterable, workers: int) -> list:
    """``[function(job) for job in jobs]``, in ``workers`` processes when ``workers > 0``.

    Decoding compressed volumes and images is the slow part of loading and is independent
    per file, so it is what worker processes speed up. They are spawned rather than forked
    so that no OpenMP or thread state of the parent is inherited.
    """
    if workers <= 0:
        return [function(job) for job in jobs]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        return list(pool.map(function, jobs))
