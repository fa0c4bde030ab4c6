"""A bounded inference pool: work runs in threads so the event loop stays responsive, and a
request that finds every worker busy and the queue full is refused at once (HTTP 503).

A request takes its slot when its headers arrive (`admit`), before its upload is read, so a
full service refuses an upload without receiving it, and at most `workers + queue_size`
uploads are spooled at a time."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from cadx.errors import ConfigError

T = TypeVar("T")


class PoolFullError(Exception):
    """Every worker is busy and the queue is full; retry after `retry_after_s` seconds."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"the service is busy; retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class Slot:
    """One admitted request's place in the pool; `release` gives it back (once)."""

    def __init__(self, pool: InferencePool) -> None:
        self._pool: InferencePool | None = pool

    def release(self) -> None:
        if self._pool is not None:
            self._pool._admitted -= 1
            self._pool = None


class InferencePool:
    """`workers` threads and at most `queue_size` waiting jobs (PyTorch releases the GIL)."""

    def __init__(self, workers: int, queue_size: int) -> None:
        if workers < 1 or queue_size < 0:
            raise ConfigError(f"need workers >= 1 and queue >= 0, got {workers} and {queue_size}")
        self.workers, self.queue_size = workers, queue_size
        self._executor: ThreadPoolExecutor | None = None  # started on first use
        self._admitted = 0  # touched only on the event loop's thread: no lock needed
        self._mean_job_s = 1.0

    @property
    def admitted(self) -> int:
        """Requests uploading, queued or running now."""
        return self._admitted

    def admit(self) -> Slot:
        """A slot for one request; PoolFullError if every slot is taken."""
        if self._admitted >= self.workers + self.queue_size:
            raise PoolFullError(self.retry_after_s())
        self._admitted += 1
        return Slot(self)

    def retry_after_s(self) -> int:
        """Seconds until a slot is likely free: the queue ahead divided among the workers."""
        return max(1, math.ceil(self._mean_job_s * (self._admitted / self.workers)))

    async def run(self, job: Callable[..., T], *args: object, slot: Slot | None = None) -> T:
        """Run `job(*args)` in a worker thread, in `slot` if the request was admitted already
        (its admitter releases it), else in a new slot; PoolFullError if none is left."""
        own_slot = self.admit() if slot is None else None
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="cadx-infer")
        started = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, job, *args)
        finally:
            if own_slot is not None:
                own_slot.release()
            # Exponential moving average of the time a job spends in the pool.
            self._mean_job_s = 0.8 * self._mean_job_s + 0.2 * (time.perf_counter() - started)

    def shutdown(self) -> None:
        """Stop the threads after their current jobs; the next `run` starts new ones."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
