"""serve/lifecycle.py: the deadline and the client who left, for any route behind the layer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from serve.batcher import Batcher
from serve.lifecycle import RequestLifecycle
from tests.serve.fakes import FakeEngine, item, run, wait_entered, wait_queued


def scope(path: str = "/v1/classify") -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": path, "headers": []}


class Client:
    """Sends one body, then reports a disconnect once ``leave`` is set; records what it got."""

    def __init__(self) -> None:
        self.leave = asyncio.Event()
        self.sent: list[dict[str, Any]] = []
        self.body_sent = False

    async def receive(self) -> dict[str, Any]:
        if not self.body_sent:
            self.body_sent = True
            return {"type": "http.request", "body": b"x", "more_body": False}
        await self.leave.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int | None:
        return next((m["status"] for m in self.sent if m["type"] == "http.response.start"), None)

    @property
    def body(self) -> dict[str, Any]:
        return json.loads(
            b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")
        )


def batching_app(batcher: Batcher, engine: FakeEngine, value: float, outcome: dict[str, Any]) -> Any:
    """An ASGI app that reads its body, then waits for the batcher's answer."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        try:
            (result,) = await batcher.submit(engine, [item(value)])
        except asyncio.CancelledError:
            outcome["cancelled"] = True
            raise
        outcome["answer"] = result.logits.tolist()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    return app


def test_a_disconnected_client_frees_its_queued_images_and_is_counted_499() -> None:
    async def main() -> None:
        batcher = Batcher(max_batch_size=8, instances=1, max_wait_ms=0)
        batcher.start()
        engine = FakeEngine()
        engine.gate.clear()
        running = asyncio.ensure_future(batcher.submit(engine, [item(0)]))
        await wait_entered(engine)  # the only worker is busy: the next images queue
        outcome: dict[str, Any] = {}
        layer = RequestLifecycle(batching_app(batcher, engine, 99, outcome), timeout_s=lambda: 30)
        client = Client()
        abandoned = asyncio.ensure_future(layer(scope(), client.receive, client.send))
        kept = asyncio.ensure_future(batcher.submit(engine, [item(5)]))
        await wait_queued(batcher, 3)
        client.leave.set()
        await abandoned
        assert outcome == {"cancelled": True}
        assert client.status == 499 and client.body["error"]["code"] == "client_closed_request"
        engine.gate.set()
        await asyncio.gather(running, kept)
        assert engine.calls == [[0.0], [5.0]]  # image 99 was never run
        await batcher.stop()

    run(main())


def test_a_connected_client_gets_the_answer_and_the_watch_ends() -> None:
    async def main() -> None:
        batcher = Batcher(max_batch_size=8, instances=2)
        batcher.start()
        outcome: dict[str, Any] = {}
        layer = RequestLifecycle(batching_app(batcher, FakeEngine(), 3, outcome), timeout_s=lambda: 30)
        client = Client()
        before = asyncio.all_tasks()
        await layer(scope(), client.receive, client.send)
        assert outcome == {"answer": [3.0, -3.0]} and client.status == 200
        watches = [t for t in asyncio.all_tasks() - before if "watch" in repr(t.get_coro())]
        assert len(watches) == 1 and watches[0].cancelling()  # cancelled with the answer
        await asyncio.gather(*watches, return_exceptions=True)
        assert watches[0].cancelled()
        await batcher.stop()

    run(main())


def test_the_deadline_cancels_the_handler_with_504_in_the_route_protocol_shape() -> None:
    async def main() -> None:
        cancelled = asyncio.Event()

        async def stuck(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await receive()
            try:
                await asyncio.Event().wait()
            finally:
                cancelled.set()

        for path, shape in (("/v1/classify", dict), ("/v2/models/m/infer", str)):
            client = Client()
            await RequestLifecycle(stuck, timeout_s=lambda: 0.01)(scope(path), client.receive, client.send)
            assert client.status == 504 and isinstance(client.body["error"], shape)
            assert cancelled.is_set()
            cancelled.clear()

    run(main())


def test_a_response_already_started_is_not_answered_twice() -> None:
    async def main() -> None:
        async def slow_body(scope: dict[str, Any], receive: Any, send: Any) -> None:
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await asyncio.Event().wait()

        client = Client()
        await RequestLifecycle(slow_body, timeout_s=lambda: 0.01)(scope(), client.receive, client.send)
        assert [m["type"] for m in client.sent] == ["http.response.start"]

    run(main())
