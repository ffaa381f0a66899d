"""Fixtures for client unit tests: an in-process fake cluster, and clients that are always closed."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fake_transport import FakeTransport

from raystream.client import Consumer, Producer, context


@pytest.fixture
def fake() -> Iterator[FakeTransport]:
    transport = FakeTransport()
    yield transport
    transport.close()  # the partitions' logs live in a temporary directory


@pytest.fixture
def make_producer(fake: FakeTransport) -> Iterator[Callable[..., Producer]]:
    made: list[Producer] = []

    def make(**kwargs) -> Producer:
        kwargs.setdefault("transport", fake)
        producer = Producer(**kwargs)
        made.append(producer)
        return producer

    yield make
    for producer in made:
        producer.close(timeout=5)


@pytest.fixture
def make_consumer(fake: FakeTransport) -> Iterator[Callable[..., Consumer]]:
    made: list[Consumer] = []

    def make(**kwargs) -> Consumer:
        kwargs.setdefault("transport", fake)
        consumer = Consumer(**kwargs)
        made.append(consumer)
        return consumer

    yield make
    for consumer in made:
        consumer.close()


@pytest.fixture(autouse=True)
def _no_current_cluster() -> Iterator[None]:
    context.set_current(None)
    yield
    context.set_current(None)

