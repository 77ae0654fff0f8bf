"""Dynamic micro-batching: requests that arrive together run through the model as one batch.

``MicroBatcher(run, max_batch, max_wait_s)`` owns one worker thread. ``submit(item)`` returns
an awaitable future; the worker takes the first waiting item, then everything else already
waiting (up to ``max_batch``), waiting at most ``max_wait_s`` after the first for more, and
calls ``run(items) -> results`` once for the whole batch. A batch's failure is every one of its
requests' failure; the other batches go on. At most ``max_pending`` items wait or run at once
(more: ``submit`` raises the service's 503), so a flood cannot pile up without bound.

Batches form by themselves under load: what queued while the previous batch ran is the next
one. ``max_wait_s`` (default 0) makes the first request of a batch wait for company.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

from fracturekit.serve._upload import busy

T = TypeVar("T")
R = TypeVar("R")

MAX_BATCH = 32  # the largest batch (fracturekit serve --batch-size)
# How long the first request of a batch waits for company (--batch-wait-ms). 0: a batch is what
# queued while the previous one ran (at 8 clients, 156 requests/s against 148 with a 2 ms wait,
# p99 65 ms against 84: benchmarks/serve_speed.py).
MAX_WAIT_S = 0.0
MAX_PENDING = 256  # requests waiting for or in a batch at once; more get 503


class MicroBatcher(Generic[T, R]):
    """Run ``run(items)`` on batches of submitted items from one worker thread.

    Attributes:
        max_batch: the largest batch.
        max_wait_s: how long the first item of a batch waits for more.
        batches: how many batches ran; ``items``: how many items they held (their ratio is the
            mean batch size, reported by ``GET /model``).
    """

    def __init__(
        self,
        run: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int = MAX_BATCH,
        max_wait_s: float = MAX_WAIT_S,
        max_pending: int = MAX_PENDING,
        name: str = "fracturekit-batch",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: must be >= 1")
        if not 0 <= max_wait_s <= 1:
            raise ValueError(f"max_wait_s={max_wait_s}: must be between 0 and 1 second")
        self.run = run
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_s)
        self.max_pending = int(max_pending)
        self.pending = 0  # submitted and not yet answered
        self._pending_lock = threading.Lock()
        self.name = name
        self.batches = 0
        self.items = 0
        self._queue: queue.Queue[tuple[T, Future] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> MicroBatcher[T, R]:
        """Start the worker thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Finish the waiting batches, then stop the worker thread."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def submit_future(self, item: T) -> Future:
        """Queue ``item``; its result (or the batch's exception) arrives in the future."""
        if self._thread is None:
            raise RuntimeError("the batcher is not started")
        with self._pending_lock:
            if self.pending >= self.max_pending:
                raise busy(f"the server is busy ({self.pending} images in batches); retry shortly")
            self.pending += 1
        future: Future = Future()
        future.add_done_callback(self._done)
        self._queue.put((item, future))
        return future

    def _done(self, _: Future) -> None:
        with self._pending_lock:
            self.pending -= 1

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait (without holding a thread) for its result."""
        return await asyncio.wrap_future(self.submit_future(item))

    @property
    def mean_batch(self) -> float:
        return self.items / self.batches if self.batches else 0.0

    def _collect(self, first: tuple[T, Future]) -> tuple[list[tuple[T, Future]], bool]:
        """``first`` and what else arrives in time: (the batch, whether to stop after it)."""
        batch = [first]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                try:
                    entry = self._queue.get(timeout=left)
                except queue.Empty:
                    break
            if entry is None:
                return batch, True
            batch.append(entry)
        return batch, False

    def _loop(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                break
            batch, stop = self._collect(first)
            live = [(item, f) for item, f in batch if f.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                results = list(self.run([item for item, _ in live]))
                if len(results) != len(live):
                    raise RuntimeError(f"a batch of {len(live)} gave {len(results)} results")
            except BaseException as exc:  # every request of the batch gets the error
                for _, f in live:
                    f.set_exception(exc)
                continue
            self.batches += 1
            self.items += len(live)
            for (_, f), result in zip(live, results, strict=True):
                f.set_result(result)
