"""Replica placement: Kafka's round-robin assignment over live brokers, so partitions of a topic spread
their leaders (the first replica) and their followers over distinct brokers (Ray nodes)."""

from __future__ import annotations

from raystream.errors import InvalidPartitionsError, InvalidReplicationFactorError


def assign_replicas(brokers: list[int], partitions: range, replication_factor: int,
                    start_index: int = 0) -> dict[int, tuple[int, ...]]:
    """Replica lists for ``partitions``: partition p starts at broker ``(start_index + p) % n`` and takes
    the next ``replication_factor - 1`` brokers after a shift that grows every ``n`` partitions (as
    Kafka's ``assignReplicasToBrokers``), so followers spread too."""
    if not isinstance(replication_factor, int) or replication_factor < 1:
        raise InvalidReplicationFactorError(f"replication factor must be >= 1, got {replication_factor!r}")
    n = len(brokers)
    if replication_factor > n:
        raise InvalidReplicationFactorError(
            f"replication factor {replication_factor} is larger than the {n} live broker(s) (Ray nodes)")
    if partitions.start < 0 or len(partitions) < 1:
        raise InvalidPartitionsError(f"invalid partition range {partitions}")
    ordered = sorted(brokers)
    out: dict[int, tuple[int, ...]] = {}
    for p in partitions:
        first = (start_index + p) % n
        shift = 1 + (p // n) % max(n - 1, 1)
        replicas = [ordered[first]]
        for j in range(replication_factor - 1):
            replicas.append(ordered[(first + shift + j) % n])
        out[p] = tuple(replicas)
    return out
