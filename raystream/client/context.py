"""The process's current cluster: ``rs.init`` sets it, clients created without ``cluster=`` /
``transport=`` use it. Ray-free (a named cluster is connected through the transport module lazily)."""

from __future__ import annotations

import threading
from typing import Any

from raystream.client.base import BaseTransport
from raystream.errors import ClusterNotFoundError

_lock = threading.Lock()
_current: BaseTransport | None = None


def set_current(transport: BaseTransport | None) -> None:
    """Make ``transport`` the current cluster (``None`` clears it, as ``rs.shutdown`` does)."""
    global _current
    if transport is not None and not isinstance(transport, BaseTransport):
        raise TypeError(f"expected a BaseTransport, got {type(transport).__name__}")
    with _lock:
        _current = transport


def get_current() -> BaseTransport:
    with _lock:
        transport = _current
    if transport is None:
        raise ClusterNotFoundError("call raystream.init() first")
    return transport


def resolve(cluster: Any = None, transport: BaseTransport | None = None) -> BaseTransport:
    """The transport a client should use: ``transport`` if given; else the cluster named by ``cluster``
    (a name, or the handle ``rs.init`` returned); else the current cluster."""
    if transport is not None:
        if cluster is not None:
            raise ValueError("pass cluster= or transport=, not both")
        if not isinstance(transport, BaseTransport):
            raise TypeError(f"transport must be a BaseTransport, got {type(transport).__name__}")
        return transport
    if cluster is None:
        return get_current()
    if isinstance(cluster, str):
        with _lock:
            current = _current
        if current is not None and current.cluster == cluster:
            return current
        from raystream.client.transport import RayTransport  # imports ray only when really needed

        return RayTransport.connect(cluster)
    if hasattr(cluster, "controller") and isinstance(getattr(cluster, "cluster", None), str):
        from raystream.client.transport import RayTransport

        return RayTransport(cluster.controller, cluster.cluster)
    raise TypeError(f"cluster must be a cluster name or the handle raystream.init() returned, "
                    f"got {type(cluster).__name__}")
