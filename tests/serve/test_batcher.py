"""serve/batcher.py: batch formation, result routing, bounded queue, errors, engines, drain.

The fake engine (tests/serve/fakes.py) blocks its first call on an event, so later
submissions pile up in the queue deterministically (no sleeps).
"""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from serve.batcher import Batcher, OverloadedError
from serve.engine import Outputs
from tests.serve.fakes import FakeEngine, item, run, wait_entered, wait_queued, wait_taken, wait_until


def test_results_are_routed_to_their_requests() -> None:
    async def main() -> None:
        engine = FakeEngine()
        batcher = Batcher(max_batch_size=8, max_wait_ms=50)
        batcher.start()
        answers = await asyncio.gather(*(batcher.submit(engine, [item(v)]) for v in range(6)))
        for value, (result,) in enumerate(answers):
            assert result.logits.tolist() == [value, -value]
            assert result.engine is engine
        await batcher.stop()

    run(main())


def test_queue_fills_while_a_batch_runs_and_respects_max_batch() -> None:
    async def main() -> None:
        engine = FakeEngine()
        engine.gate.clear()
        batches: list[int] = []
        batcher = Batcher(max_batch_size=4, max_wait_ms=0, on_batch=batches.append)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(engine, [item(0)]))
        await wait_entered(engine)  # the first batch is running; the rest must queue
        rest = [asyncio.ensure_future(batcher.submit(engine, [item(v)])) for v in range(1, 11)]
        await wait_queued(batcher, 11)
        assert batcher.depth == 11
        engine.gate.set()
        await asyncio.gather(first, *rest)
        assert batches == [1, 4, 4, 2]
        assert [v for call in engine.calls for v in call] == list(range(11))  # queue order kept
        assert batcher.depth == 0
        await batcher.stop()

    run(main())


def test_batches_hold_at_most_the_engine_run_batch_size() -> None:
    async def main() -> None:
        engine = FakeEngine()
        engine.run_batch_size = 2
        batches: list[int] = []
        batcher = Batcher(max_batch_size=8, max_wait_ms=0, on_batch=batches.append)
        batcher.start()
        results = await batcher.submit(engine, [item(v) for v in range(5)])
        assert batches == [2, 2, 1] and engine.calls == [[0.0, 1.0], [2.0, 3.0], [4.0]]
        assert [r.logits[0] for r in results] == [0, 1, 2, 3, 4]
        await batcher.stop()

    run(main())


def test_instances_run_batches_at_the_same_time_in_queue_order() -> None:
    class TwoAtOnce(FakeEngine):
        """Each call waits until a second call is inside infer too: one worker alone would hang."""

        run_batch_size = 1

        def __init__(self) -> None:
            super().__init__()
            self.both_inside = threading.Barrier(2, timeout=10)

        def infer(
            self, batch: np.ndarray, with_attention: bool = False, instance: int | None = None
        ) -> Outputs:
            if float(batch[0, 0]) < 2:
                self.both_inside.wait()
            return super().infer(batch, with_attention, instance)

    async def main() -> None:
        engine = TwoAtOnce()
        batcher = Batcher(max_batch_size=8, max_wait_ms=0, instances=2)
        batcher.start()
        results = await batcher.submit(engine, [item(v) for v in range(4)])
        assert [r.logits[0] for r in results] == [0, 1, 2, 3]
        assert sorted(engine.calls) == [[0.0], [1.0], [2.0], [3.0]]
        session_of = {
            call[0]: instance for call, instance in zip(engine.calls, engine.instances, strict=True)
        }
        assert {session_of[0.0], session_of[1.0]} == {0, 1}  # the two calls at once: one per instance
        await batcher.stop()

    run(main())


def test_free_instances_share_the_ready_images() -> None:
    async def main() -> None:
        engine = FakeEngine()
        engine.run_batch_size = 8
        batches: list[int] = []
        batcher = Batcher(max_batch_size=8, max_wait_ms=0, instances=2, on_batch=batches.append)
        batcher.start()
        await wait_until(lambda: batcher._collecting == 2)  # both workers wait for images, as in a server
        results = await batcher.submit(engine, [item(v) for v in range(8)])
        assert batches == [4, 4]  # not 8 on one instance while the other idles
        assert [r.logits[0] for r in results] == list(range(8))
        assert sorted(engine.instances) == [0, 1]
        engine.gate.clear()
        engine.entered.clear()
        busy = asyncio.ensure_future(batcher.submit(engine, [item(0)]))
        await wait_entered(engine)  # one worker runs a batch: the free one takes a full batch
        rest = asyncio.ensure_future(batcher.submit(engine, [item(v) for v in range(1, 9)]))
        await wait_taken(batcher, depth=9)
        engine.gate.set()
        await asyncio.gather(busy, rest)
        assert batches == [4, 4, 1, 8]
        await batcher.stop()

    run(main())


def test_instances_must_be_positive() -> None:
    with pytest.raises(ValueError, match="instances"):
        Batcher(instances=0)


def test_a_lone_request_does_not_wait_but_announced_ones_are_awaited() -> None:
    async def main() -> None:
        engine = FakeEngine()
        batches: list[int] = []
        batcher = Batcher(max_batch_size=4, max_wait_ms=60_000, on_batch=batches.append)
        batcher.start()
        await batcher.submit(engine, [item(1)])  # nothing else announced: runs at once
        assert batches == [1]

        async def announced(value: float) -> None:
            with batcher.incoming(1):
                await asyncio.sleep(0)  # "decoding"
            await batcher.submit(engine, [item(value)])

        with batcher.incoming(1):  # a second image is being decoded: the batch waits for it
            first = asyncio.ensure_future(batcher.submit(engine, [item(2)]))
            await wait_taken(batcher, 1)  # the batcher takes image 2 and waits for the announced one
            second = asyncio.ensure_future(batcher.submit(engine, [item(3)]))
            await wait_queued(batcher, 2)  # image 3 is queued before the announcement ends
        await asyncio.gather(first, second)
        assert batches == [1, 2]
        await asyncio.gather(*(announced(v) for v in (4, 5, 6)))
        assert sum(batches) == 6
        await batcher.stop()

    run(main())


def test_announcing_more_than_the_queue_holds_is_refused() -> None:
    batcher = Batcher(max_queue=2)
    with batcher.incoming(2), pytest.raises(OverloadedError), batcher.incoming(1):
        pass
    with batcher.incoming(2):  # the refused announcement left nothing behind
        pass


def test_a_full_batch_does_not_wait_for_the_deadline() -> None:
    async def main() -> None:
        engine = FakeEngine()
        batches: list[int] = []
        batcher = Batcher(max_batch_size=3, max_wait_ms=60_000, on_batch=batches.append)
        batcher.start()
        await batcher.submit(engine, [item(1), item(2), item(3)])  # would hang if it waited
        assert batches == [3]
        await batcher.stop()

    run(main())


def test_bounded_queue_rejects_whole_requests() -> None:
    async def main() -> None:
        engine = FakeEngine()
        engine.gate.clear()
        batcher = Batcher(max_batch_size=1, max_wait_ms=0, max_queue=3)
        batcher.start()
        held = asyncio.ensure_future(batcher.submit(engine, [item(0), item(1)]))
        await wait_entered(engine)
        with pytest.raises(OverloadedError):
            await batcher.submit(engine, [item(2), item(3)])  # 2 + 2 > 3: none of it is queued
        engine.gate.set()
        await held
        assert engine.calls == [[0.0], [1.0]]
        await batcher.stop()

    run(main())


def test_model_error_fails_that_batch_only() -> None:
    async def main() -> None:
        broken, healthy = FakeEngine(fail=True), FakeEngine()
        batcher = Batcher(max_batch_size=4, max_wait_ms=1)
        batcher.start()
        with pytest.raises(RuntimeError, match="model exploded"):
            await batcher.submit(broken, [item(1)])
        (result,) = await batcher.submit(healthy, [item(2)])
        assert result.logits.tolist() == [2, -2]
        await batcher.stop()

    run(main())


def test_cancelled_requests_are_skipped() -> None:
    async def main() -> None:
        engine = FakeEngine()
        engine.gate.clear()
        batcher = Batcher(max_batch_size=8, max_wait_ms=0)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(engine, [item(0)]))
        await wait_entered(engine)
        gone = asyncio.ensure_future(batcher.submit(engine, [item(99)]))
        kept = asyncio.ensure_future(batcher.submit(engine, [item(5)]))
        await wait_queued(batcher, 3)
        gone.cancel()
        engine.gate.set()
        await asyncio.gather(first, kept)
        assert 99.0 not in [v for call in engine.calls for v in call]
        await batcher.stop()

    run(main())


def test_batches_never_mix_engines() -> None:
    async def main() -> None:
        old, new = FakeEngine(), FakeEngine()
        old.gate.clear()
        batcher = Batcher(max_batch_size=8, max_wait_ms=0)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(old, [item(0)]))
        await wait_entered(old)
        queued = [
            asyncio.ensure_future(batcher.submit(e, [item(v)])) for v, e in enumerate([old, new, old], 1)
        ]
        await wait_queued(batcher, 4)
        old.gate.set()
        results = await asyncio.gather(first, *queued)
        assert [r[0].engine for r in results] == [old, old, new, old]
        assert old.calls == [[0.0], [1.0], [3.0]] and new.calls == [[2.0]]
        await batcher.stop()

    run(main())


def test_attention_rows_follow_their_images() -> None:
    async def main() -> None:
        engine = FakeEngine()
        batcher = Batcher(max_batch_size=4, max_wait_ms=20)
        batcher.start()
        a, b = await asyncio.gather(
            batcher.submit(engine, [item(3)], with_attention=True), batcher.submit(engine, [item(7)])
        )
        assert a[0].attention.tolist() == [[3.0, 3.0]]
        assert b[0].logits.tolist() == [7.0, -7.0]
        if engine.calls == [[3.0, 7.0]]:  # one batch: its attention rows were split by image too
            assert b[0].attention.tolist() == [[7.0, 7.0]]
        else:
            assert b[0].attention is None
        await batcher.stop()

    run(main())


def test_stop_drains_queued_work() -> None:
    async def main() -> None:
        engine = FakeEngine()
        engine.gate.clear()
        batcher = Batcher(max_batch_size=2, max_wait_ms=0)
        batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(engine, [item(v)])) for v in range(5)]
        await wait_entered(engine)
        await wait_queued(batcher, 5)
        stopping = asyncio.ensure_future(batcher.stop(timeout=10))
        engine.gate.set()
        await stopping
        assert all(task.done() and not task.exception() for task in pending)

    run(main())


def test_the_loop_survives_its_own_errors() -> None:
    calls: list[int] = []

    def flaky_callback(size: int) -> None:
        calls.append(size)
        if len(calls) == 1:
            raise ValueError("metrics backend down")

    async def main() -> None:
        engine = FakeEngine()
        batcher = Batcher(max_batch_size=4, max_wait_ms=0, on_batch=flaky_callback)
        batcher.start()
        with pytest.raises(ValueError, match="metrics backend down"):
            await batcher.submit(engine, [item(1)])
        (result,) = await batcher.submit(engine, [item(2)])
        assert result.logits.tolist() == [2, -2]
        await batcher.stop()

    run(main())


class Decoded:
    """What ``Batcher.alone`` needs of a prepared image: its array (and the thread it ran on)."""

    def __init__(self, value: float) -> None:
        self.array = item(value)
        self.thread = threading.current_thread().name


def test_alone_decodes_and_infers_in_one_inference_thread_call() -> None:
    sizes: list[int] = []

    async def main() -> None:
        engine = FakeEngine()
        batcher = Batcher(max_batch_size=8, max_wait_ms=50, on_batch=sizes.append)
        batcher.start()
        assert batcher.idle()
        prepared, result = await batcher.alone(engine, lambda: Decoded(3.0))
        assert prepared.thread.startswith("vit-infer")
        assert result.logits.tolist() == [3.0, -3.0] and result.engine is engine
        assert engine.calls == [[3.0]] and sizes == [1]
        assert engine.instances == [None]  # the session with all threads: lowest latency
        assert batcher.idle() and batcher.depth == 0
        await batcher.stop()

    run(main())


def test_requests_arriving_during_alone_are_queued_and_answered() -> None:
    async def main() -> None:
        engine = FakeEngine()
        engine.gate.clear()
        batcher = Batcher(max_batch_size=8, max_wait_ms=0, instances=2)
        batcher.start()
        lone = asyncio.ensure_future(batcher.alone(engine, lambda: Decoded(1.0), with_attention=True))
        await wait_entered(engine)
        assert not batcher.idle() and batcher.depth == 1
        queued = asyncio.ensure_future(batcher.submit(engine, [item(2.0), item(4.0)]))
        await wait_queued(batcher, 3)
        engine.gate.set()
        (_, first), second = await lone, await queued
        assert first.attention.tolist() == [[1.0, 1.0]]
        assert [r.logits.tolist() for r in second] == [[2.0, -2.0], [4.0, -4.0]]
        assert list(map(len, engine.calls)) == [1, 1, 1]  # the two queued ones: one per instance
        await batcher.stop()

    run(main())


def test_a_worker_keeps_its_batch_open_while_alone_runs() -> None:
    # A worker that takes an image while the idle path holds the cores must not close a batch
    # of one behind it: images queued until the idle call ends join the same batch.
    async def main() -> None:
        engine = FakeEngine()
        engine.gate.clear()
        batcher = Batcher(max_batch_size=8, max_wait_ms=0)
        batcher.start()
        lone = asyncio.ensure_future(batcher.alone(engine, lambda: Decoded(1.0)))
        await wait_entered(engine)
        early = asyncio.ensure_future(batcher.submit(engine, [item(2.0)]))
        await wait_taken(batcher, depth=2)  # the lone call and the image the worker took
        late = [asyncio.ensure_future(batcher.submit(engine, [item(v)])) for v in (3.0, 4.0)]
        await wait_queued(batcher, 4)
        engine.gate.set()
        await lone
        answers = [await early, *[await task for task in late]]
        assert [r.logits.tolist() for (r,) in answers] == [[2.0, -2.0], [3.0, -3.0], [4.0, -4.0]]
        assert engine.calls == [[1.0], [2.0, 3.0, 4.0]]
        await batcher.stop()

    run(main())


def test_alone_passes_decode_errors_through_and_stays_usable() -> None:
    def broken() -> Decoded:
        raise ValueError("upload: not an image")

    async def main() -> None:
        engine = FakeEngine()
        batcher = Batcher(max_batch_size=4, max_wait_ms=0)
        batcher.start()
        with pytest.raises(ValueError, match="not an image"):
            await batcher.alone(engine, broken)
        assert batcher.idle() and engine.calls == []
        _, result = await batcher.alone(engine, lambda: Decoded(5.0))
        assert result.logits.tolist() == [5.0, -5.0]
        await batcher.stop()

    run(main())


def test_stop_fails_images_a_worker_holds_while_collecting() -> None:
    async def main() -> None:
        engine = FakeEngine()
        batcher = Batcher(max_batch_size=4, max_wait_ms=60_000)
        batcher.start()
        with batcher.incoming(1):  # an announced image keeps the worker's batch open
            waiting = asyncio.ensure_future(batcher.submit(engine, [item(1.0)]))
            await wait_taken(batcher, depth=1)
            await batcher.stop(timeout=0.0)
        with pytest.raises(OverloadedError, match="shutting down"):
            await waiting
        assert engine.calls == []

    run(main())
