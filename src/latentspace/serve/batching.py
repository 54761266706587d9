"""Dynamic batching: requests from many clients share one forward pass.

One `InferenceWorker` per served model owns a thread that runs every forward for that model.
Request handlers (on the event loop) hand it a *job* (one request's images or texts) and await
a future. The thread forms each batch from the oldest pending jobs of one kind (images, or texts
of one task type), up to a budget: a number of images, or a number of tokens for text, since a
text forward costs what its tokens cost. A large request is spread over several batches and a
small one rides along with others, in arrival order.

The queue is bounded (in items): a full queue is refused at once (HTTP 429) instead of letting
latency grow without limit. If the thread dies, every waiting job fails with `WorkerDead` and
`alive` turns False, which `/health` reports, so a dead worker never leaves requests hanging.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)


# The adaptive wait (InferenceWorker, max_wait_s=None): at most this share of the last forward's
# time, and never longer than the cap.
ADAPTIVE_WAIT_FRACTION = 0.15
ADAPTIVE_WAIT_CAP_S = 0.02


class QueueFull(RuntimeError):
    """The worker already holds as many items as it may; retry later."""


class WorkerDead(RuntimeError):
    """The inference thread is not running; the server cannot embed until it is restarted."""


@dataclass
class BatchKind:
    """What can share a forward: e.g. ("image",) or ("text", "search_query")."""

    key: Hashable
    run: Callable[[list], torch.Tensor]  # items -> (len(items), D) rows, on the worker thread
    budget: int  # max total cost per batch


@dataclass
class _Job:
    kind: BatchKind
    items: list
    costs: list[int]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    results: list = field(default_factory=list)
    next: int = 0  # first item not yet batched

    def resolve(self, value=None, error: BaseException | None = None) -> None:
        def _set() -> None:
            if self.future.done():  # the client went away and the handler was cancelled
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(value)

        try:
            self.loop.call_soon_threadsafe(_set)
        except RuntimeError:  # event loop already closed (server shutting down)
            pass


@dataclass
class BatchObserver:
    """Hooks for metrics; the defaults do nothing."""

    batch: Callable[[Hashable, int, float], None] = lambda kind, size, seconds: None
    depth: Callable[[int], None] = lambda items: None


class InferenceWorker:
    def __init__(
        self, name: str, *, max_queue_items: int, max_wait_s: float | None = None, observer: BatchObserver | None = None
    ):
        """`max_wait_s`: how long a forward waits for more requests to share it. A number is a
        fixed wait (0: never wait). None is adaptive: wait only while fewer items are queued
        than the last batch had (under steady load, answered clients are about to send again),
        for at most ADAPTIVE_WAIT_FRACTION of the last forward's time and ADAPTIVE_WAIT_CAP_S.
        A lone client never waits, since its last batch held its own request only."""
        self.name = name
        self.max_queue_items = max_queue_items
        self.max_wait_s = max_wait_s
        self._last_batch_items = 0
        self._last_forward_s = 0.0
        self.observer = observer or BatchObserver()
        self._jobs: deque[_Job] = deque()
        self._pending_items = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"inference-{name}", daemon=True)
        self._inflight: list[_Job] = []  # jobs with items in the forward running now
        self.death: str | None = None  # why the thread stopped, if it did

    # -- event-loop side -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.death is None

    async def submit(self, kind: BatchKind, items: Sequence, costs: Sequence[int] | None = None) -> torch.Tensor:
        """Embed `items` as part of whatever batches form; returns (len(items), D) rows in order."""
        if not items:
            raise ValueError("nothing to embed")
        loop = asyncio.get_running_loop()
        job = _Job(kind, list(items), list(costs or [1] * len(items)), loop.create_future(), loop)
        with self._cond:
            if not self.alive:
                raise WorkerDead(
                    f"the inference worker for model {self.name!r} is not running ({self.death or 'not started'})"
                )
            if self._pending_items + len(items) > self.max_queue_items:
                raise QueueFull(
                    f"model {self.name!r} has {self._pending_items} items queued "
                    f"(limit {self.max_queue_items}); retry shortly"
                )
            self._jobs.append(job)
            self._pending_items += len(items)
            self.observer.depth(self._pending_items)
            self._cond.notify()
        return await job.future

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # -- worker thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    self.death = "stopped"
                    break
                self._execute(*batch)
        except BaseException as e:  # noqa: BLE001 - anything that ends the thread must fail waiters
            self.death = f"crashed: {type(e).__name__}: {e}"
            log.error("inference worker %s %s", self.name, self.death)
        finally:
            self.death = self.death or "stopped"
            self._fail_all(WorkerDead(f"the inference worker for model {self.name!r} {self.death}"))

    def _next_batch(self) -> tuple[BatchKind, list[tuple[_Job, int, int]]] | None:
        """Wait for work, then take up to one budget of items of the oldest job's kind."""
        with self._cond:
            while not self._jobs and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            self._wait_for_company()
            kind = self._jobs[0].kind
            parts, spent = [], 0
            for job in list(self._jobs):
                if job.kind.key != kind.key:
                    continue
                start = end = job.next
                # Always take at least one item, so an item costlier than the budget still runs.
                while end < len(job.items) and (spent == 0 or spent + job.costs[end] <= kind.budget):
                    spent += job.costs[end]
                    end += 1
                if end > start:
                    parts.append((job, start, end))
                    job.next = end
                    if end == len(job.items):
                        self._jobs.remove(job)
                if end < len(job.items):
                    break  # budget spent
            return kind, parts

    def _wait_for_company(self) -> None:
        """Let a few more requests arrive to share this forward (called holding the lock)."""
        if self.max_wait_s is not None:
            wait, enough = self.max_wait_s, None
        else:
            wait = min(ADAPTIVE_WAIT_CAP_S, ADAPTIVE_WAIT_FRACTION * self._last_forward_s)
            enough = self._last_batch_items
            if self._pending_items >= enough:
                return
        deadline = time.monotonic() + wait
        while not self._stopping and (left := deadline - time.monotonic()) > 0:
            if enough is not None and self._pending_items >= enough:
                return
            self._cond.wait(left)

    def _execute(self, kind: BatchKind, parts: list[tuple[_Job, int, int]]) -> None:
        items = [item for job, start, end in parts for item in job.items[start:end]]
        self._inflight = [job for job, _, _ in parts]
        started = time.perf_counter()
        try:
            rows = kind.run(items)
        except Exception as e:  # a failing forward fails this batch's requests, not the worker
            log.exception("inference failed for model %s", self.name)
            error = RuntimeError(f"inference failed: {type(e).__name__}: {e}")
            self._finish(parts, error=error)
            return
        self._last_forward_s = time.perf_counter() - started
        self._last_batch_items = len(items)
        self.observer.batch(kind.key, len(items), self._last_forward_s)
        offset = 0
        for job, start, end in parts:
            job.results.append(rows[offset : offset + end - start])
            offset += end - start
        self._finish(parts)

    def _finish(self, parts: list[tuple[_Job, int, int]], error: BaseException | None = None) -> None:
        with self._cond:
            for job, start, end in parts:
                self._pending_items -= end - start
                if error is not None:
                    if job in self._jobs:
                        self._jobs.remove(job)
                        self._pending_items -= len(job.items) - job.next
                    job.resolve(error=error)
                elif job.next == len(job.items) and sum(len(r) for r in job.results) == len(job.items):
                    job.resolve(torch.cat(job.results))
            self._inflight = []
            self.observer.depth(self._pending_items)

    def _fail_all(self, error: BaseException) -> None:
        with self._cond:
            jobs = list({id(job): job for job in [*self._inflight, *self._jobs]}.values())
            self._jobs, self._inflight = deque(), []
            self._pending_items = 0
            self.observer.depth(0)
        for job in jobs:
            job.resolve(error=error)
