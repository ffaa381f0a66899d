"""Light futures for produced records.

One :class:`BatchResult` per produce request (a batch of records to one partition) carries the outcome;
each record's :class:`RecordFuture` is just (result, index, timestamp) — no lock, event or condition per
record. A batch the broker rejects as too large is split; its result then delegates each index to the
child batch that now holds it, so every record still learns its own offset (or error).

``result(timeout)`` expiring raises :class:`ResultTimeoutError`, which is both a raystream
``RequestTimeoutError`` and a builtin ``TimeoutError`` (what ``concurrent.futures`` raises).
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from raystream.errors import RequestTimeoutError
from raystream.protocol import BatchMetadata, RecordMetadata

log = logging.getLogger(__name__)

class ResultTimeoutError(RequestTimeoutError, TimeoutError):
    """Waiting on a future (or ``flush``) gave up before the outcome was known."""


def _run_callback(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except Exception:  # a user callback must not kill the sender thread
        log.exception("exception in a produce callback")


class BatchResult:
    """Outcome of one produce request: completed (or failed) once, by the producer's sender thread; any
    thread may wait on it or add callbacks (run on the completing thread, or at once if already done)."""

    __slots__ = ("topic", "partition", "record_count", "base_offset", "log_append_time", "max_timestamp",
                 "error", "_lock", "_event", "_callbacks", "_children", "_starts", "_parent")

    def __init__(self, topic: str, partition: int) -> None:
        self.topic = topic
        self.partition = partition
        self.record_count = 0
        self.base_offset = -1
        self.log_append_time = -1
        self.max_timestamp = -1
        self.error: BaseException | None = None
        self._lock = threading.Lock()  # this result's own: adding callbacks never waits on other batches
        self._event = threading.Event()
        self._callbacks: list[Callable[[], Any]] | None = []
        self._children: list[BatchResult] | None = None
        self._starts: list[int] = []
        self._parent: BatchResult | None = None

    def done(self) -> bool:
        return self._event.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._event.wait(timeout)

    def complete(self, base_offset: int, log_append_time: int = -1, max_timestamp: int = -1) -> None:
        self._finish((base_offset, log_append_time, max_timestamp), None)

    def fail(self, exc: BaseException) -> None:
        self._finish(None, exc)

    def _finish(self, offsets: tuple[int, int, int] | None, error: BaseException | None) -> None:
        """Record the outcome once (later calls are ignored) and run the callbacks."""
        with self._lock:
            if self._event.is_set():
                return
            if offsets is not None:
                self.base_offset, self.log_append_time, self.max_timestamp = offsets
            self.error = error
            callbacks, self._callbacks = self._callbacks, None
            self._event.set()
        for fn in callbacks or ():
            _run_callback(fn)
        if self._parent is not None:
            self._parent._child_done()

    def add_callback(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` when this result completes (at once, on this thread, if it already has)."""
        with self._lock:
            if self._callbacks is not None:
                self._callbacks.append(fn)
                return
        _run_callback(fn)

    # -- splitting ---------------------------------------------------------------------------------------
    def split(self, counts: list[int]) -> list[BatchResult]:
        """Hand this batch's records, in order, to new child results of ``counts`` records each."""
        assert self._children is None and not self.done(), "only a pending, unsplit batch can split"
        assert sum(counts) == self.record_count, (counts, self.record_count)
        children, starts, start = [], [], 0
        for count in counts:
            child = BatchResult(self.topic, self.partition)
            child.record_count, child._parent = count, self
            children.append(child)
            starts.append(start)
            start += count
        self._children, self._starts = children, starts
        return children

    def _child_done(self) -> None:
        if all(child.done() for child in self._children or ()):
            self._finish(None, None)

    def leaf(self, index: int) -> tuple[BatchResult, int]:
        """The (unsplit) result that holds record ``index`` of this batch, and its index there."""
        result = self
        while result._children is not None:
            i = bisect.bisect_right(result._starts, index) - 1
            index -= result._starts[i]
            result = result._children[i]
        return result, index

    def leaves(self) -> list[BatchResult]:
        if self._children is None:
            return [self]
        return [leaf for child in self._children for leaf in child.leaves()]

    def batch_metadata(self) -> BatchMetadata:
        if self.error is not None:
            raise self.error
        timestamp = self.log_append_time if self.log_append_time >= 0 else self.max_timestamp
        return BatchMetadata(self.topic, self.partition, self.base_offset, self.record_count, timestamp)


class RecordFuture:
    """The future of one sent record: resolves to :class:`~raystream.protocol.RecordMetadata`.

    Same methods as ``concurrent.futures.Future``'s reading side (``result``, ``exception``, ``done``,
    ``add_done_callback``); ``get`` is kafka-python's name for ``result``."""

    __slots__ = ("_result", "_index", "_timestamp")

    def __init__(self, result: BatchResult, index: int, timestamp: int) -> None:
        self._result = result
        self._index = index
        self._timestamp = timestamp

    def done(self) -> bool:
        return self._result.done()

    def cancelled(self) -> bool:
        return False

    def cancel(self) -> bool:
        return False

    def _wait(self, timeout: float | None) -> tuple[BatchResult, int]:
        if not self._result.wait(timeout):
            raise ResultTimeoutError(f"record not acknowledged within {timeout} s")
        return self._result.leaf(self._index)

    def result(self, timeout: float | None = None) -> RecordMetadata:
        leaf, index = self._wait(timeout)
        if leaf.error is not None:
            raise leaf.error
        offset = leaf.base_offset + index if leaf.base_offset >= 0 else -1
        timestamp = leaf.log_append_time if leaf.log_append_time >= 0 else self._timestamp
        return RecordMetadata(leaf.topic, leaf.partition, offset, timestamp)

    get = result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        leaf, _ = self._wait(timeout)
        return leaf.error

    def add_done_callback(self, fn: Callable[[RecordFuture], Any]) -> None:
        self._result.add_callback(lambda: fn(self))

    def __repr__(self) -> str:
        state = "done" if self.done() else "pending"
        return f"<RecordFuture {self._result.topic}-{self._result.partition}#{self._index} {state}>"


class BatchFuture:
    """The future of a ``send_batch``: resolves to ``list[BatchMetadata]``, one per produce request (per
    partition, and per ``max_request_size`` chunk), in send order. Fails with the first error if any
    request failed."""

    __slots__ = ("_results", "_pending", "_lock", "_callbacks", "_event")

    def __init__(self, results: list[BatchResult]) -> None:
        self._results = results
        self._pending = len(results)
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], Any]] | None = []
        self._event = threading.Event()
        if not results:
            self._event.set()
            self._callbacks = None
        for result in results:
            result.add_callback(self._one_done)

    def _one_done(self) -> None:
        with self._lock:
            self._pending -= 1
            if self._pending:
                return
            callbacks, self._callbacks = self._callbacks, None
            self._event.set()
        for fn in callbacks or ():
            _run_callback(fn)

    def done(self) -> bool:
        return self._event.is_set()

    def cancelled(self) -> bool:
        return False

    def cancel(self) -> bool:
        return False

    def _wait(self, timeout: float | None) -> list[BatchResult]:
        if not self._event.wait(timeout):
            raise ResultTimeoutError(f"batch not acknowledged within {timeout} s")
        return [leaf for result in self._results for leaf in result.leaves()]

    def result(self, timeout: float | None = None) -> list[BatchMetadata]:
        return [leaf.batch_metadata() for leaf in self._wait(timeout)]

    get = result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return next((leaf.error for leaf in self._wait(timeout) if leaf.error is not None), None)

    def add_done_callback(self, fn: Callable[[BatchFuture], Any]) -> None:
        with self._lock:
            if self._callbacks is not None:
                self._callbacks.append(lambda: fn(self))
                return
        _run_callback(lambda: fn(self))


def wait_all(results: list[BatchResult], timeout: float | None) -> bool:
    """Wait until every result is done; False if ``timeout`` (seconds) ran out first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    for result in results:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not result.wait(remaining):
            return False
    return True
