"""Partition assignors (pure): Kafka's range, round-robin, sticky and cooperative-sticky, and protocol selection."""

from __future__ import annotations

import pickle
import time

import pytest

from raystream.core.assignors import (
    ASSIGNORS,
    InconsistentGroupProtocolError,
    RebalanceProtocol,
    Subscription,
    cooperative_sticky_assign,
    member_order,
    range_assign,
    resolve_ownership,
    roundrobin_assign,
    select_protocol,
    sticky_assign,
)
from raystream.protocol import TopicPartition


def tps(spec: str) -> list[TopicPartition]:
    """``"t0-0 t0-1"`` -> [TopicPartition("t0", 0), TopicPartition("t0", 1)]."""
    out = []
    for item in spec.split():
        topic, _, partition = item.rpartition("-")
        out.append(TopicPartition(topic, int(partition)))
    return out


def subs(**topics: str) -> dict[str, Subscription]:
    return {m: Subscription(t.split()) for m, t in topics.items()}


# -- range ------------------------------------------------------------------------------------------------
def test_range_splits_each_topic_into_contiguous_ranges_first_members_get_the_extra():
    result = range_assign(subs(c1="t0 t1", c2="t0 t1"), {"t0": 3, "t1": 3})
    assert result == {"c1": tps("t0-0 t0-1 t1-0 t1-1"), "c2": tps("t0-2 t1-2")}


def test_range_considers_only_the_subscribers_of_each_topic():
    result = range_assign(subs(a="t0", b="t0 t1", c="t1"), {"t0": 5, "t1": 2, "unknown": 0})
    assert result == {"a": tps("t0-0 t0-1 t0-2"), "b": tps("t0-3 t0-4 t1-0"), "c": tps("t1-1")}


def test_range_skips_unknown_topics_and_gives_more_members_than_partitions_nothing():
    result = range_assign(subs(a="t0 gone", b="t0", c="t0"), {"t0": 2})
    assert result == {"a": tps("t0-0"), "b": tps("t0-1"), "c": []}


def test_member_order_puts_static_members_first_by_instance_id():
    members = {"z-dyn": Subscription(["t"]), "m-2": Subscription(["t"], group_instance_id="b"),
               "a-dyn": Subscription(["t"]), "m-1": Subscription(["t"], group_instance_id="c")}
    assert member_order(members) == ["m-2", "m-1", "a-dyn", "z-dyn"]
    result = range_assign(members, {"t": 4})
    assert result["m-2"] == tps("t-0") and result["z-dyn"] == tps("t-3")


# -- round robin ------------------------------------------------------------------------------------------
def test_roundrobin_deals_sorted_partitions_in_member_order():
    result = roundrobin_assign(subs(c0="t0 t1", c1="t0 t1"), {"t0": 3, "t1": 3})
    assert result == {"c0": tps("t0-0 t0-2 t1-1"), "c1": tps("t0-1 t1-0 t1-2")}


def test_roundrobin_skips_members_not_subscribed_to_the_topic():
    result = roundrobin_assign(subs(c0="t0", c1="t0 t1", c2="t0 t1"), {"t0": 1, "t1": 2})
    assert result == {"c0": tps("t0-0"), "c1": tps("t1-0"), "c2": tps("t1-1")}
    # Kafka's documented unbalanced case: t0 has 1, t1 2, t2 3 partitions; c0 ⊂ c1 ⊂ c2 subscriptions.
    result = roundrobin_assign(subs(c0="t0", c1="t0 t1", c2="t0 t1 t2"), {"t0": 1, "t1": 2, "t2": 3})
    assert result == {"c0": tps("t0-0"), "c1": tps("t1-0"), "c2": tps("t1-1 t2-0 t2-1 t2-2")}


# -- sticky -----------------------------------------------------------------------------------------------
def test_sticky_docstring_example_new_member_takes_from_the_most_loaded():
    members = subs(c1="t", c2="t", c3="t")
    current = {"c1": tps("t-0 t-1 t-2"), "c2": tps("t-3")}
    assert sticky_assign(members, {"t": 4}, current) == {"c1": tps("t-0 t-1"), "c2": tps("t-3"),
                                                         "c3": tps("t-2")}


def test_sticky_keeps_everything_when_a_member_leaves_and_spreads_its_partitions():
    members = subs(c1="t", c3="t")
    current = {"c1": tps("t-0 t-3"), "c2": tps("t-1 t-4"), "c3": tps("t-2 t-5")}
    result = sticky_assign(members, {"t": 6}, current)
    assert set(tps("t-0 t-3")) <= set(result["c1"]) and set(tps("t-2 t-5")) <= set(result["c3"])
    assert sorted(len(v) for v in result.values()) == [3, 3]


def test_sticky_balances_heterogeneous_subscriptions_and_drops_unsubscribed_partitions():
    members = subs(a="t0", b="t0 t1")
    current = {"a": tps("t1-0 t1-1"), "b": tps("t0-0 t0-1 t0-2 t0-3")}
    result = sticky_assign(members, {"t0": 4, "t1": 2}, current)
    # t1 can only go to b, so b keeps only one of its t0 partitions: 3 and 3, as balanced as it gets.
    assert result == {"a": tps("t0-1 t0-2 t0-3"), "b": tps("t0-0 t1-0 t1-1")}


def test_sticky_from_scratch_is_balanced():
    result = sticky_assign(subs(a="t", b="t", c="t"), {"t": 7})
    assert sorted(len(v) for v in result.values()) == [2, 2, 3]


# -- cooperative sticky -----------------------------------------------------------------------------------
def test_cooperative_revokes_first_and_assigns_in_the_follow_up():
    members = subs(c1="t", c2="t")
    first = cooperative_sticky_assign(members, {"t": 2}, {"c1": tps("t-0 t-1")})
    assert first.assignment == {"c1": tps("t-0"), "c2": []}
    assert first.revoked == frozenset(tps("t-1")) and first.needs_follow_up
    second = cooperative_sticky_assign(members, {"t": 2}, first.assignment)
    assert second.assignment == {"c1": tps("t-0"), "c2": tps("t-1")} and not second.needs_follow_up


def test_cooperative_gives_partitions_of_departed_members_at_once():
    members = subs(c1="t", c2="t")
    current = {"c1": tps("t-0"), "gone": tps("t-1 t-2 t-3")}
    result = cooperative_sticky_assign(members, {"t": 4}, current)
    assert not result.revoked
    assert result.assignment["c1"][0] == TopicPartition("t", 0)
    assert sorted(len(v) for v in result.assignment.values()) == [2, 2]


def test_cooperative_revokes_a_partition_of_an_unsubscribed_topic_before_moving_it():
    members = subs(a="t0", b="t0 t1")
    result = cooperative_sticky_assign(members, {"t0": 1, "t1": 1}, {"a": tps("t0-0 t1-0")})
    assert result.assignment == {"a": tps("t0-0"), "b": []} and result.revoked == frozenset(tps("t1-0"))


def test_cooperative_reads_owned_partitions_from_subscriptions_by_default():
    members = {"c1": Subscription(["t"], tps("t-0 t-1"), generation_id=4), "c2": Subscription(["t"])}
    result = cooperative_sticky_assign(members, {"t": 2})
    assert result.assignment == {"c1": tps("t-0"), "c2": []} and result.revoked == frozenset(tps("t-1"))


def test_ownership_conflicts_go_to_the_highest_generation_and_ties_to_nobody():
    members = {"a": Subscription(["t"], tps("t-0 t-1"), generation_id=3),
               "b": Subscription(["t"], tps("t-0"), generation_id=2),
               "c": Subscription(["t"], tps("t-1"), generation_id=3)}
    assert resolve_ownership(members) == {TopicPartition("t", 0): "a"}
    assert resolve_ownership(members, {"a": tps("t-0"), "b": tps("t-0")}, {"a": 1, "b": 2}) == {
        TopicPartition("t", 0): "b"}


def test_sticky_is_fast_enough_for_a_large_group():
    members = {f"m{i:03}": Subscription([f"t{j}" for j in range(10)]) for i in range(100)}
    partitions = {f"t{j}": 100 for j in range(10)}
    start = time.monotonic()
    first = sticky_assign(members, partitions)
    del members["m000"], members["m050"]
    members["new"] = Subscription([f"t{j}" for j in range(10)])
    second = cooperative_sticky_assign(members, partitions, first)
    assert time.monotonic() - start < 5.0
    assert {len(v) for v in first.values()} == {10}
    moved = sum(len(set(second.assignment[m]) ^ set(first[m])) for m in members if m in first)
    assert moved <= 20


# -- registry and protocol selection ----------------------------------------------------------------------
def test_registry_has_kafkas_names_and_one_calling_convention():
    assert set(ASSIGNORS) == {"range", "roundrobin", "sticky", "cooperative-sticky"}
    assert ASSIGNORS["cooperative-sticky"].rebalance_protocol is RebalanceProtocol.COOPERATIVE
    assert ASSIGNORS["range"].rebalance_protocol is RebalanceProtocol.EAGER
    members = subs(a="t", b="t")
    for assignor in ASSIGNORS.values():
        result = assignor.assign(members, {"t": 4}, {"a": tps("t-0 t-1 t-2 t-3")})
        assert sum(len(v) for v in result.assignment.values()) + len(result.revoked) == 4


def test_select_protocol_votes_among_protocols_every_member_supports():
    assert select_protocol({"a": ["cooperative-sticky", "range"], "b": ["range"]}) == "range"
    assert select_protocol({"a": ["range", "roundrobin"], "b": ["roundrobin", "range"],
                            "c": ["roundrobin", "range"]}) == "roundrobin"
    assert select_protocol({"a": ["range", "roundrobin"], "b": ["roundrobin", "range"]}) == "range"  # tie
    assert select_protocol({"a": ["x", "range"], "b": ["x", "range"]}) == "x"


def test_select_protocol_without_a_common_protocol_raises_a_picklable_error():
    with pytest.raises(InconsistentGroupProtocolError) as info:
        select_protocol({"a": ["range"], "b": ["roundrobin"]})
    copy = pickle.loads(pickle.dumps(info.value))
    assert copy.member_protocols == {"a": ["range"], "b": ["roundrobin"]} and not copy.retriable
