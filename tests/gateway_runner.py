"""A raystream Kafka gateway serving on its own event-loop thread (for tests of every suite)."""

from __future__ import annotations

import asyncio
import threading

from raystream.gateway.server import Gateway


class RunningGateway:
    """A :class:`Gateway` serving on its own event-loop thread; ``bootstrap`` is its address."""

    def __init__(self, transport, **options) -> None:
        self.loop = asyncio.new_event_loop()
        self.gateway = Gateway(transport, "127.0.0.1", 0, **options)
        self.loop.run_until_complete(self.gateway.start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="gateway-loop")
        self.thread.start()
        self.bootstrap = f"127.0.0.1:{self.gateway.port}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.gateway.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
