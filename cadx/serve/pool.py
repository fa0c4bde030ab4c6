"""A bounded inference pool: work runs in threads so the event loop stays responsive, and a
request that finds every worker busy and the queue full is refused at once (HTTP 503)."""

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
        """Jobs running or queued now."""
        return self._admitted

    def retry_after_s(self) -> int:
        """Seconds until a slot is likely free: the queue ahead divided among the workers."""
        return max(1, math.ceil(self._mean_job_s * (self._admitted / self.workers)))

    async def run(self, job: Callable[..., T], *args: object) -> T:
        """Run `job(*args)` in a worker thread; PoolFullError if no slot is left."""
        if self._admitted >= self.workers + self.queue_size:
            raise PoolFullError(self.retry_after_s())
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="cadx-infer")
        self._admitted += 1
        started = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, job, *args)
        finally:
            self._admitted -= 1
            # Exponential moving average of the time a job spends in the pool.
            self._mean_job_s = 0.8 * self._mean_job_s + 0.2 * (time.perf_counter() - started)

    def shutdown(self) -> None:
        """Stop the threads after their current jobs; the next `run` starts new ones."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
