"""serve/server.py: disconnected clients free their queued work; the engine the server opens."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from starlette.requests import Request

from serve.errors import ApiError
from serve.server import Server, open_engine
from serve.settings import Settings
from tests.serve.test_batcher import FakeEngine, item, run, wait_entered
from tests.serve.test_engine import spins


def request_with(disconnect: asyncio.Event) -> Request:
    """A request whose body was read; ``receive`` reports the disconnect once the event is set."""

    async def receive() -> dict[str, str]:
        await disconnect.wait()
        return {"type": "http.disconnect"}

    return Request({"type": "http", "method": "POST", "path": "/v1/classify", "headers": []}, receive)


def test_a_disconnected_client_frees_its_queued_images() -> None:
    async def main() -> None:
        server = Server(Settings(model=Path("model.onnx"), instances=1, max_wait_ms=0))
        server.batcher.start()
        engine = FakeEngine()
        engine.gate.clear()
        running = asyncio.ensure_future(server.batcher.submit(engine, [item(0)]))
        await wait_entered(engine)  # the only worker is busy: the next images queue
        gone = asyncio.Event()
        abandoned = asyncio.ensure_future(
            server.while_connected(request_with(gone), server.batcher.submit(engine, [item(99)]))
        )
        kept = asyncio.ensure_future(server.batcher.submit(engine, [item(5)]))
        for _ in range(5):  # let both requests reach the queue
            await asyncio.sleep(0)
        assert server.batcher.depth == 3
        gone.set()
        with pytest.raises(ApiError) as error:
            await abandoned
        assert (error.value.status, error.value.code) == (499, "client_closed_request")
        engine.gate.set()
        await asyncio.gather(running, kept)
        assert engine.calls == [[0.0], [5.0]]  # image 99 was never run
        await server.batcher.stop()

    run(main())


def test_a_connected_client_gets_the_answer_and_the_watch_ends() -> None:
    async def main() -> None:
        server = Server(Settings(model=Path("model.onnx"), instances=2))
        server.batcher.start()
        engine = FakeEngine()
        (result,) = await server.while_connected(
            request_with(asyncio.Event()), server.batcher.submit(engine, [item(3)])
        )
        assert result.logits.tolist() == [3, -3]
        watchers = [t for t in asyncio.all_tasks() if "_disconnected" in repr(t.get_coro())]
        await asyncio.sleep(0)
        assert all(t.done() for t in watchers)
        await server.batcher.stop()

    run(main())


@pytest.mark.parametrize(
    ("instances", "spin", "spinning"), [(2, True, True), (1, True, False), (2, False, False)]
)
def test_the_lone_request_session_spins_only_when_batches_have_their_own(
    tiny_model: Path, instances: int, spin: bool, spinning: bool
) -> None:
    # With instance sessions the all-threads session runs only on an idle server; with one
    # instance it runs the batches too, beside the decoding threads it must not starve.
    engine = open_engine(Settings(model=tiny_model, instances=instances, threads=2, spin=spin))
    assert spins(engine.session) is spinning
