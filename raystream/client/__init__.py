"""Client-side API (producers, consumers, admin) that talks to raystream actors.

Only :mod:`raystream.client.transport` imports Ray; everything else here is testable with an in-process
fake transport (:class:`raystream.client.base.BaseTransport`).
"""

from raystream.client.admin import Admin
from raystream.client.base import BaseTransport
from raystream.client.consumer import Consumer, OffsetAndTimestamp
from raystream.client.futures import BatchFuture, RecordFuture, ResultTimeoutError
from raystream.client.producer import Producer

__all__ = ["Admin", "BaseTransport", "BatchFuture", "Consumer", "OffsetAndTimestamp", "Producer", "RecordFuture",
           "ResultTimeoutError"]
