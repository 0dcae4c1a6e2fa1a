"""Dynamic batching: coalesce concurrent calls into one model batch.

Embedding models cost much less per input in one batch than in many small ones (64
single-text `encode` calls took 6.6x as long as one call with 64 texts on 2 cores).
Callers `submit` their inputs and await their own outputs; one worker runs the model on
everything that is waiting, up to `max_batch_size` inputs, in a thread so the event
loop keeps accepting requests meanwhile. When the model is idle the worker waits while
inputs keep arriving, at most `max_wait`, for more to join; while a batch runs, new
inputs queue anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")


@dataclass(eq=False)
class _Job(Generic[In, Out]):
    items: Sequence[In]
    future: asyncio.Future[list[Out]]
    results: list[Out] = field(default_factory=list)
    taken: int = 0  # items handed to batches so far


class DynamicBatcher(Generic[In, Out]):
    """Runs `fn(batch) -> outputs` (blocking, one output per input) on coalesced inputs."""

    def __init__(
        self, fn: Callable[[list[In]], list[Out]], max_batch_size: int = 64, max_wait: float = 0.02, gap: float = 0.002
    ) -> None:
        self.fn = fn
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.gap = min(gap, max_wait)
        self._queue: deque[_Job[In, Out]] = deque()
        self._wakeup = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self.batches = 0
        self.batch_sizes: list[int] = []  # recent batch sizes (bounded), for status pages
        self.on_batch: Callable[[int], None] | None = None  # called with each batch's size
        self.waiting = 0
        self.running = 0

    async def submit(self, items: Sequence[In]) -> list[Out]:
        """Outputs for `items`, in order. A call larger than a batch spans several."""
        if not items:
            return []
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._run(), name="dynamic-batcher")
        job: _Job[In, Out] = _Job(items, asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self.waiting += len(items)
        self._wakeup.set()
        return await job.future

    def _take(self) -> list[tuple[_Job[In, Out], int, int]]:
        """Up to max_batch_size waiting inputs: (job, start, end) slices, oldest first."""
        parts = []
        room = self.max_batch_size
        while self._queue and room:
            job = self._queue[0]
            if job.future.done():  # cancelled while waiting
                self._queue.popleft()
                self.waiting -= len(job.items) - job.taken
                continue
            n = min(room, len(job.items) - job.taken)
            parts.append((job, job.taken, job.taken + n))
            job.taken += n
            room -= n
            if job.taken == len(job.items):
                self._queue.popleft()
        return parts

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            # Idle model: let a burst of concurrent callers join this batch. Wait while
            # inputs keep arriving (each within `gap` of the last), at most `max_wait`
            # in all; a lone request waits only `gap`.
            deadline = loop.time() + self.max_wait
            while self.waiting < self.max_batch_size and loop.time() < deadline:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), min(self.gap, deadline - loop.time()))
                except TimeoutError:
                    break
            parts = self._take()
            if not parts:
                continue
            batch = [item for job, a, b in parts for item in job.items[a:b]]
            self.waiting -= len(batch)
            self.running = len(batch)
            try:
                outputs = await asyncio.to_thread(self.fn, batch)
                if len(outputs) != len(batch):
                    raise RuntimeError(f"model returned {len(outputs)} outputs for {len(batch)} inputs")
            except Exception as exc:  # the batch's callers get the error; the worker goes on
                for job, _, _ in parts:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            finally:
                self.running = 0
            self.batches += 1
            self.batch_sizes.append(len(batch))
            if self.on_batch is not None:
                self.on_batch(len(batch))
            del self.batch_sizes[:-1000]
            pos = 0
            for job, a, b in parts:
                n = b - a
                job.results.extend(outputs[pos : pos + n])
                pos += n
                if len(job.results) == len(job.items) and not job.future.done():
                    job.future.set_result(job.results)

    async def close(self) -> None:
        """Stop the worker; waiting callers get an error."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        for job in self._queue:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the model was unloaded"))
        self._queue.clear()
