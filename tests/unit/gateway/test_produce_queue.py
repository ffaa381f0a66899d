"""A connection's produce requests to one partition: in order, plain ones coalesced behind a call in flight,
idempotent ones pipelined one per call (raystream.gateway.produce_queue)."""

from __future__ import annotations

import asyncio
from concurrent.futures import Future

import pyarrow as pa
import pytest

from raystream.errors import NotLeaderError
from raystream.gateway.produce_queue import PartitionQueue
from raystream.protocol import ProduceResult

PLAIN = {"acks": -1, "producer_id": -1}


def rows(*values: bytes) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict({"value": pa.array(values, pa.binary())})


class Leader:
    """Records every submitted append; each answers when the test says."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[bytes], dict, Future]] = []
        self.next_offset = 0

    def submit(self, records: pa.RecordBatch, **options) -> Future:
        future: Future = Future()
        self.calls.append((records.column("value").to_pylist(), options, future))
        return future

    def answer(self, index: int) -> None:
        values, _, future = self.calls[index]
        future.set_result(ProduceResult(self.next_offset, -1, 0, len(values), -1))
        self.next_offset += len(values)


async def until(condition) -> None:
    """Let the loop run the answers' callbacks (they arrive through wrap_future) until ``condition``."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


def test_plain_requests_behind_a_call_in_flight_go_together_with_their_own_offsets():
    async def scenario():
        leader = Leader()
        queue = PartitionQueue(leader.submit)
        first, second, third = queue.reserve(), queue.reserve(), queue.reserve()
        first.fill(rows(b"a"), **PLAIN)
        queue.pump()
        second.fill(rows(b"b", b"c"), **PLAIN)
        third.fill(rows(b"d"), **PLAIN)
        queue.pump()
        assert [c[0] for c in leader.calls] == [[b"a"]]  # the others wait for the call in flight
        leader.answer(0)
        await until(lambda: len(leader.calls) == 2)
        assert [c[0] for c in leader.calls] == [[b"a"], [b"b", b"c", b"d"]]  # then go as one append
        leader.answer(1)
        await until(lambda: third.result.done())
        assert [(await e.result).base_offset for e in (first, second, third)] == [0, 1, 3]
        assert [(await e.result).record_count for e in (first, second, third)] == [1, 2, 1]
        assert queue.idle

    asyncio.run(scenario())


def test_idempotent_requests_are_pipelined_one_per_call_in_order():
    async def scenario():
        leader = Leader()
        queue = PartitionQueue(leader.submit)
        entries = [queue.reserve() for _ in range(3)]
        for i, entry in enumerate(entries):
            entry.fill(rows(b"%d" % i), acks=-1, producer_id=7, producer_epoch=0, base_sequence=i)
        queue.pump()
        assert [c[0] for c in leader.calls] == [[b"0"], [b"1"], [b"2"]]
        assert [c[1]["base_sequence"] for c in leader.calls] == [0, 1, 2]

    asyncio.run(scenario())


def test_a_request_not_yet_decoded_holds_up_later_ones_until_it_is_filled_or_refused():
    async def scenario():
        leader = Leader()
        queue = PartitionQueue(leader.submit)
        slow, fast = queue.reserve(), queue.reserve()
        fast.fill(rows(b"fast"), acks=-1, producer_id=7, base_sequence=1)
        queue.pump()
        assert leader.calls == []  # sent before the earlier request would reorder them at the leader
        slow.fill(None)  # refused before it was sent
        queue.pump()
        assert [c[0] for c in leader.calls] == [[b"fast"]]

    asyncio.run(scenario())


def test_a_failed_shared_append_fails_every_request_in_it():
    async def scenario():
        leader = Leader()
        queue = PartitionQueue(leader.submit)
        first, second, third = queue.reserve(), queue.reserve(), queue.reserve()
        first.fill(rows(b"x"), **PLAIN)
        queue.pump()
        for entry in (second, third):
            entry.fill(rows(b"x"), **PLAIN)
        queue.pump()
        leader.answer(0)
        await until(lambda: len(leader.calls) == 2)
        leader.calls[1][2].set_exception(NotLeaderError("moved"))
        await until(lambda: third.result.done())
        for entry in (second, third):
            with pytest.raises(NotLeaderError):
                await entry.result
        assert (await first.result).base_offset == 0

    asyncio.run(scenario())
