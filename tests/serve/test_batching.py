"""The batcher on its own: budgets, order, sharing forwards, and failure isolation."""

import asyncio
import threading

import pytest
import torch

from latentspace.serve.batching import BatchKind, InferenceWorker, QueueFull, WorkerDead


def recording_kind(
    key, budget, calls, gate: threading.Event | None = None, fail_on=None, started: threading.Event | None = None
):
    def run(items):
        if started is not None:
            started.set()
        if gate is not None:
            gate.wait(5)
        calls.append(list(items))
        if fail_on is not None and fail_on in items:
            raise ValueError("boom")
        return torch.tensor([[float(x)] for x in items])

    return BatchKind(key, run, budget)


def run(coro):
    return asyncio.run(coro)


def test_results_come_back_in_order_and_requests_share_forwards():
    calls, gate, started = [], threading.Event(), threading.Event()
    worker = InferenceWorker("m", max_queue_items=100)
    worker.start()
    kind = recording_kind(("image",), budget=4, calls=calls, gate=gate, started=started)

    async def main():
        first = asyncio.create_task(worker.submit(kind, [1]))  # occupies the worker while the rest queue
        assert await asyncio.to_thread(started.wait, 30)  # its forward has begun (however loaded the machine)
        rest = [asyncio.create_task(worker.submit(kind, items)) for items in ([2, 3], [4, 5, 6, 7, 8], [9])]
        await asyncio.sleep(0.05)
        gate.set()
        return await first, await asyncio.gather(*rest)

    first, rest = run(main())
    assert first.flatten().tolist() == [1.0]
    assert [r.flatten().tolist() for r in rest] == [[2, 3], [4, 5, 6, 7, 8], [9]]
    assert calls == [[1], [2, 3, 4, 5], [6, 7, 8, 9]]  # budget 4, big request split, arrival order kept
    worker.stop()


def test_text_budget_counts_tokens_and_oversized_items_still_run():
    calls = []
    worker = InferenceWorker("m", max_queue_items=100)
    worker.start()
    kind = recording_kind(("text", "q"), budget=10, calls=calls)
    out = run(worker.submit(kind, [1, 2, 3, 4], costs=[4, 4, 4, 30]))
    assert out.flatten().tolist() == [1, 2, 3, 4]
    assert calls == [[1, 2], [3], [4]]
    worker.stop()


def test_kinds_are_never_mixed_in_one_forward():
    calls, gate = [], threading.Event()
    worker = InferenceWorker("m", max_queue_items=100)
    worker.start()
    query = recording_kind(("text", "query"), 100, calls, gate)
    doc = recording_kind(("text", "doc"), 100, calls, gate)

    async def main():
        tasks = [
            asyncio.create_task(worker.submit(k, items))
            for k, items in ((query, [1]), (doc, [2]), (query, [3]), (doc, [4]))
        ]
        await asyncio.sleep(0.05)
        gate.set()
        return await asyncio.gather(*tasks)

    run(main())
    assert sorted(map(sorted, calls)) == [[1], [2, 4], [3]] or sorted(map(sorted, calls)) == [[1, 3], [2, 4]]
    worker.stop()


def test_a_failing_forward_fails_only_its_batch():
    calls = []
    worker = InferenceWorker("m", max_queue_items=100)
    worker.start()
    kind = recording_kind(("image",), 2, calls, fail_on=666)
    with pytest.raises(RuntimeError, match="inference failed: ValueError: boom"):
        run(worker.submit(kind, [666]))
    assert run(worker.submit(kind, [7])).flatten().tolist() == [7]
    assert worker.alive and worker._pending_items == 0
    worker.stop()


def test_queue_bound_and_dead_worker():
    gate = threading.Event()
    worker = InferenceWorker("m", max_queue_items=3)
    worker.start()
    kind = recording_kind(("image",), 1, [], gate)

    async def main():
        held = asyncio.create_task(worker.submit(kind, [1, 2, 3]))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull, match="limit 3"):
            await worker.submit(kind, [4])
        gate.set()
        return await held

    assert run(main()).flatten().tolist() == [1, 2, 3]
    worker.stop()
    assert not worker.alive
    with pytest.raises(WorkerDead, match="not running"):
        run(worker.submit(kind, [1]))


def _sleepy_kind(calls, seconds: float) -> BatchKind:
    import time

    def run(items):
        calls.append(list(items))
        time.sleep(seconds)
        return torch.tensor([[float(x)] for x in items])

    return BatchKind(("image",), run, 64)


def test_adaptive_wait_lets_returning_clients_share_the_next_forward():
    """After a forward of 4, the next forward waits (briefly) until 4 items are queued again."""
    calls = []
    worker = InferenceWorker("m", max_queue_items=100)  # max_wait_s None: adaptive
    worker.start()
    kind = _sleepy_kind(calls, 0.1)

    async def main():
        await asyncio.gather(*(worker.submit(kind, [i]) for i in range(4)))  # one forward of 4
        first = asyncio.create_task(worker.submit(kind, [10]))
        await asyncio.sleep(0.005)  # the others come back a few ms later, well within 15% of 0.1 s
        rest = [asyncio.create_task(worker.submit(kind, [i])) for i in (11, 12, 13)]
        await asyncio.gather(first, *rest)

    run(main())
    assert calls[-1] == [10, 11, 12, 13]
    worker.stop()


def test_a_lone_client_never_waits():
    import time

    calls = []
    worker = InferenceWorker("m", max_queue_items=100)
    worker.start()
    kind = _sleepy_kind(calls, 0.0)

    async def main():
        for i in range(5):
            started = time.perf_counter()
            await worker.submit(kind, [i])
            assert time.perf_counter() - started < 0.5
        return calls

    assert run(main()) == [[0], [1], [2], [3], [4]]
    assert worker._last_batch_items == 1  # so the next forward would not wait either
    worker.stop()
