"""One connection's Produce requests to one partition, on their way to the partition's leader.

The gateway answers a connection's requests concurrently (:mod:`raystream.gateway.server`), but a client's
produce requests to a partition must reach the leader in the order it sent them. Each request takes its
place in its partition's queue when it arrives (:meth:`PartitionQueue.reserve`, before any await), is
filled once decoded (:meth:`Entry.fill`) and goes to the leader only after every earlier one:

* an idempotent or transactional request goes alone and at once (its sequence numbers are checked batch by
  batch at the leader), several of them pipelined;
* plain requests (no producer id) that queue up while a call is in flight go together, as one append,
  when it returns: a client sending one record per request with ``linger.ms=0`` (librdkafka allows a
  million requests in flight) would otherwise need a Ray call per record. Each request is answered with its
  own base offset inside the shared append.

Concurrency: used on the gateway's event loop only.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pyarrow as pa

from raystream.protocol import ProduceResult

#: Submit one append: (records, acks, timeout_ms, producer fields) -> a future of the leader's answer.
Submit = Callable[..., Future]


@dataclasses.dataclass(eq=False)
class Entry:
    """One request's place in its partition's queue; ``result`` is its own answer."""

    result: asyncio.Future
    records: pa.RecordBatch | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # leader, acks, producer fields, ...
    filled: bool = False

    @property
    def plain(self) -> bool:
        return self.options.get("producer_id", -1) < 0 and not self.options.get("transactional", False)

    def fill(self, records: pa.RecordBatch | None, **options: Any) -> None:
        """Ready to go with ``options`` for the submit call (``records`` None: nothing to send)."""
        self.records, self.options, self.filled = records, options, True


class PartitionQueue:
    """See the module docstring."""

    def __init__(self, submit: Submit) -> None:
        self._submit = submit
        self._entries: collections.deque[Entry] = collections.deque()
        self._in_flight = 0

    @property
    def idle(self) -> bool:
        return not self._entries and not self._in_flight

    def reserve(self) -> Entry:
        entry = Entry(asyncio.get_running_loop().create_future())
        self._entries.append(entry)
        return entry

    def pump(self) -> None:
        """Send what may go now, in order (see the module docstring)."""
        while self._entries and self._entries[0].filled:
            head = self._entries[0]
            if head.records is None:  # failed before it was sent: it holds nothing up
                self._entries.popleft()
                continue
            if not head.plain:
                self._send([self._entries.popleft()])
                continue
            if self._in_flight:
                return  # plain requests wait for the call in flight, and then go together
            group = [self._entries.popleft()]
            while (self._entries and self._entries[0].filled and self._entries[0].records is not None
                   and self._entries[0].plain and self._entries[0].options == head.options):
                group.append(self._entries.popleft())
            self._send(group)

    def _send(self, group: list[Entry]) -> None:
        first = group[0]
        records = first.records if len(group) == 1 else pa.Table.from_batches(
            [e.records for e in group]).combine_chunks().to_batches()[0]
        try:
            pending = self._submit(records, **first.options)
        except Exception as exc:  # refused before it went: every request of the group gets the error
            for entry in group:
                _settle(entry.result, exc=exc)
            return
        self._in_flight += 1
        asyncio.wrap_future(pending).add_done_callback(lambda done: self._answered(group, done))

    def _answered(self, group: list[Entry], done: asyncio.Future) -> None:
        self._in_flight -= 1
        exc = done.exception() if not done.cancelled() else asyncio.CancelledError()
        offset = 0
        for entry in group:
            if exc is not None:
                _settle(entry.result, exc=exc)
            else:
                answer: ProduceResult = done.result()
                _settle(entry.result, value=dataclasses.replace(
                    answer, base_offset=answer.base_offset + offset if answer.base_offset >= 0 else -1,
                    record_count=entry.records.num_rows))
            offset += entry.records.num_rows
        self.pump()


def _settle(future: asyncio.Future, value: Any = None, exc: BaseException | None = None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)
