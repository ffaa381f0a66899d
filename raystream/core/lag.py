"""Consumer lag as Kafka's tools report it (kafka-consumer-groups ``LAG``).

Per partition: the high watermark (ListOffsets ``LATEST`` to the leader) minus the group's committed
offset, never negative; unknown (``None``) where the high watermark could not be had. One definition for
``Admin.describe_group`` and the group coordinator's ``raystream_consumer_group_lag`` gauge.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def consumer_lag(committed: Mapping[K, int], end_offsets: Mapping[K, int | None]) -> dict[K, int | None]:
    """Lag of each partition in ``committed`` (partition → committed offset) given ``end_offsets``
    (partition → high watermark, None or missing: unknown).

    >>> consumer_lag({"orders-0": 40, "orders-1": 7}, {"orders-0": 100, "orders-1": None})
    {'orders-0': 60, 'orders-1': None}
    """
    lag: dict[K, int | None] = {}
    for tp, offset in committed.items():
        end = end_offsets.get(tp)
        lag[tp] = None if end is None else max(end - offset, 0)
    return lag
