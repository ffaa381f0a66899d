"""Laws of the partition assignors (Hypothesis), and a stateful test of the group state machine.

Assignor laws: every subscribed partition goes to exactly one member subscribed to its topic (cooperative:
or is revoked), nothing else is assigned; range and round-robin balance as Kafka's do; sticky results are
balanced in Kafka's sense (no single move reduces the imbalance) and keep what balance allows;
cooperative-sticky never hands a partition directly from one owner to another and converges in one
follow-up. The group machine is driven by random joins, rejoins, syncs, heartbeats, leaves, metadata changes
and time passing, with invariants on ownership, generations and membership.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from raystream.core.assignors import (
    ASSIGNORS,
    AssignmentResult,
    Subscription,
    cooperative_sticky_assign,
    member_order,
    sticky_assign,
)
from raystream.core.group import GroupMetadata, GroupState
from raystream.core.group_results import random_member_ids
from raystream.errors import IllegalGenerationError, RebalanceInProgressError, UnknownMemberIdError
from raystream.protocol import TopicPartition

TOPICS = ["t0", "t1", "t2"]


@st.composite
def groups(draw, homogeneous: bool = False):
    """(members, partitions_per_topic, current ownership without conflicts, incl. departed members)."""
    partitions = {t: draw(st.integers(0, 7)) for t in TOPICS}
    n = draw(st.integers(1, 6))
    shared = draw(st.lists(st.sampled_from(TOPICS + ["missing"]), min_size=1, max_size=3, unique=True))
    members = {}
    for i in range(n):
        topics = shared if homogeneous else draw(
            st.lists(st.sampled_from(TOPICS + ["missing"]), min_size=1, max_size=3, unique=True))
        instance = draw(st.none() | st.sampled_from(["i0", "i1", "i2", "i3", "i4", "i5"]))
        if instance in {s.group_instance_id for s in members.values()}:
            instance = None
        members[f"m{draw(st.integers(0, 99)):02}-{i}"] = Subscription(list(topics), group_instance_id=instance)
    owners = list(members) + ["departed"]
    current: dict[str, list[TopicPartition]] = {}
    for t, count in partitions.items():
        for p in range(count):
            owner = draw(st.none() | st.sampled_from(owners))
            if owner is not None:
                current.setdefault(owner, []).append(TopicPartition(t, p))
    return members, partitions, current


def subscribed(members, partitions) -> set[TopicPartition]:
    return {TopicPartition(t, p) for s in members.values() for t in s.topics for p in range(partitions.get(t, 0))}


def run(name: str, members, partitions, current) -> AssignmentResult:
    return ASSIGNORS[name].assign(members, partitions, current)


def counts(assignment) -> dict[str, int]:
    return {m: len(v) for m, v in assignment.items()}


def assert_complete(members, partitions, result: AssignmentResult) -> None:
    seen: list[TopicPartition] = [tp for tps in result.assignment.values() for tp in tps]
    assert set(result.assignment) == set(members)
    assert len(seen) == len(set(seen)), "a partition assigned twice"
    for member_id, tps in result.assignment.items():
        assert all(tp.topic in members[member_id].topics for tp in tps)
    assert not set(seen) & result.revoked
    assert set(seen) | result.revoked == subscribed(members, partitions)


def assert_kafka_balanced(members, assignment) -> None:
    """No member could take a partition from a member with more than one more partition than itself."""
    for receiver, mine in assignment.items():
        for donor, theirs in assignment.items():
            if len(theirs) > len(mine) + 1:
                assert not any(tp.topic in members[receiver].topics for tp in theirs), (receiver, donor)


@settings(max_examples=300, deadline=None)
@given(groups(), st.sampled_from(sorted(ASSIGNORS)))
def test_every_subscribed_partition_has_exactly_one_subscribed_owner(group, name):
    members, partitions, current = group
    result = run(name, members, partitions, current)
    assert_complete(members, partitions, result)
    if name != "cooperative-sticky":
        assert not result.revoked


@settings(max_examples=200, deadline=None)
@given(groups(), st.sampled_from(sorted(ASSIGNORS)), st.randoms(use_true_random=False))
def test_assignors_are_deterministic_whatever_the_member_order(group, name, rnd):
    members, partitions, current = group
    shuffled = list(members.items())
    rnd.shuffle(shuffled)
    assert run(name, dict(shuffled), partitions, current) == run(name, members, partitions, current)


@settings(max_examples=200, deadline=None)
@given(groups())
def test_range_balances_each_topic_among_its_subscribers_extra_to_the_first(group):
    members, partitions, _ = group
    result = run("range", members, partitions, None).assignment
    order = member_order(members)
    for topic in TOPICS:
        per_member = [sum(tp.topic == topic for tp in result[m]) for m in order if topic in members[m].topics]
        if per_member:
            assert max(per_member) - min(per_member) <= 1
            assert per_member == sorted(per_member, reverse=True)


@settings(max_examples=200, deadline=None)
@given(groups(homogeneous=True), st.sampled_from(["roundrobin", "sticky", "cooperative-sticky"]))
def test_identical_subscriptions_differ_by_at_most_one_partition(group, name):
    members, partitions, current = group
    result = run(name, members, partitions, current if name != "cooperative-sticky" else None)
    sizes = counts(result.assignment).values()
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=300, deadline=None)
@given(groups())
def test_sticky_is_balanced_in_kafkas_sense_and_same_subscriptions_differ_by_at_most_one(group):
    members, partitions, current = group
    result = sticky_assign(members, partitions, current)
    assert_kafka_balanced(members, result)
    for a in members:
        for b in members:
            if set(members[a].topics) == set(members[b].topics):
                assert abs(len(result[a]) - len(result[b])) <= 1


@settings(max_examples=300, deadline=None)
@given(groups(homogeneous=True))
def test_sticky_keeps_as_much_as_balance_permits(group):
    members, partitions, current = group
    total = len(subscribed(members, partitions))
    floor, extra = divmod(total, len(members))
    valid = {m: set(current.get(m, ())) & subscribed(members, partitions) for m in members}
    result = sticky_assign(members, partitions, current)
    kept = {m: len(valid[m] & set(result[m])) for m in members}
    for m in members:
        assert kept[m] >= min(len(valid[m]), floor)
        assert set(result[m]) >= valid[m] or set(result[m]) <= valid[m], "gained and lost at once"
        if len(valid[m]) <= floor:
            assert set(result[m]) >= valid[m], "lost a partition although balance permitted keeping it"
    best = sum(min(len(v), floor) for v in valid.values()) + min(extra, sum(len(v) > floor for v in valid.values()))
    assert sum(kept.values()) == best


@settings(max_examples=300, deadline=None)
@given(groups())
def test_cooperative_never_moves_a_partition_directly_between_owners(group):
    members, partitions, current = group
    result = cooperative_sticky_assign(members, partitions, current)
    target = sticky_assign(members, partitions, current)
    owner = {tp: m for m, tps in current.items() if m in members for tp in tps}
    for member_id, tps in result.assignment.items():
        assert all(owner.get(tp, member_id) == member_id for tp in tps), "moved without revocation"
        assert set(tps) <= set(target[member_id])
        assert set(target[member_id]) - set(tps) <= result.revoked
    for tp in result.revoked:
        assert tp in owner, "revoked a partition nobody owned"


@settings(max_examples=300, deadline=None)
@given(groups())
def test_cooperative_follow_up_converges_to_a_balanced_assignment(group):
    members, partitions, current = group
    result = cooperative_sticky_assign(members, partitions, current)
    for _ in range(3):
        if not result.revoked:
            break
        result = cooperative_sticky_assign(members, partitions, result.assignment)
    assert not result.revoked, "no convergence within three follow-up rebalances"
    assert_complete(members, partitions, result)
    assert_kafka_balanced(members, result.assignment)


@settings(max_examples=300, deadline=None)
@given(groups(homogeneous=True))
def test_cooperative_with_identical_subscriptions_needs_a_single_follow_up(group):
    members, partitions, current = group
    first = cooperative_sticky_assign(members, partitions, current)
    second = cooperative_sticky_assign(members, partitions, first.assignment)
    assert not second.revoked
    for m in members:  # the follow-up only hands out what was revoked
        assert set(second.assignment[m]) >= set(first.assignment[m])


# -- the group state machine --------------------------------------------------------------------------------
SESSION_MS, REBALANCE_MS, DELAY_MS = 1_000, 3_000, 200


class Client:
    def __init__(self, member_id: str, instance: str | None, topics: list[str]) -> None:
        self.member_id, self.instance, self.topics = member_id, instance, topics
        self.generation = -1
        self.synced = -1
        self.stalled = False


class GroupMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0
        self.group = GroupMetadata("g", member_ids=random_member_ids(random.Random(7)),
                                   initial_rebalance_delay_ms=DELAY_MS, topic_partitions={"a": 3, "b": 2})
        self.clients: list[Client] = []
        self.generations: list[int] = []
        self.protocols: list[str] = ["range"]

    @initialize(protocol=st.sampled_from(["cooperative-sticky", "cooperative-sticky", *sorted(ASSIGNORS)]))
    def choose_protocol(self, protocol: str) -> None:
        self.protocols = [protocol]

    # -- the controller: poll after every request -------------------------------------------------------
    def poll(self) -> None:
        result = self.group.poll(self.now)
        if result.completion is not None:
            completion = result.completion
            assert not self.generations or completion.generation_id > self.generations[-1]
            self.generations.append(completion.generation_id)
            assert list(completion.members) == list(self.group.members)
            for client in self.clients:
                if client.member_id in completion.members:
                    client.generation = completion.generation_id
        if result.next_deadline_ms is not None:
            assert result.next_deadline_ms > self.now or self.group.join_ready(self.now) is False

    def join(self, client: Client | None, instance: str | None, topics: list[str]) -> None:
        member_id = client.member_id if client else None
        try:
            result = self.group.join(member_id, instance, self.protocols, Subscription(topics),
                                     session_timeout_ms=SESSION_MS, rebalance_timeout_ms=REBALANCE_MS,
                                     now_ms=self.now)
        except UnknownMemberIdError:
            self.clients.remove(client)
            return
        if client is None:
            if instance is not None:  # a static member replaces its old incarnation (now fenced)
                self.clients = [c for c in self.clients if c.instance != instance]
            client = Client(result.member_id, instance, topics)
            self.clients.append(client)
        client.topics = topics
        if not result.awaiting:
            client.generation = result.generation_id
        self.poll()

    @rule(instance=st.none() | st.sampled_from(["s0", "s1"]), topics=st.sampled_from([["a"], ["b"], ["a", "b"]]))
    def join_new(self, instance: str | None, topics: list[str]) -> None:
        self.join(None, instance, topics)

    @rule(data=st.data(), topics=st.sampled_from([None, ["a"], ["a", "b"]]))
    def rejoin(self, data, topics) -> None:
        if self.clients:
            client = data.draw(st.sampled_from(self.clients))
            self.join(client, client.instance, topics or client.topics)

    @rule(data=st.data())
    def sync(self, data) -> None:
        if not self.clients:
            return
        client = data.draw(st.sampled_from(self.clients))
        try:
            self.group.sync(client.member_id, client.generation, now_ms=self.now)
        except UnknownMemberIdError:
            self.clients.remove(client)
        except (IllegalGenerationError, RebalanceInProgressError):
            pass
        self.poll()

    @rule(data=st.data())
    def heartbeat(self, data) -> None:
        if not self.clients:
            return
        client = data.draw(st.sampled_from(self.clients))
        try:
            self.group.heartbeat(client.member_id, client.generation, self.now)
        except UnknownMemberIdError:
            self.clients.remove(client)
        except IllegalGenerationError:
            pass
        self.poll()

    @rule(data=st.data())
    def leave(self, data) -> None:
        if self.clients:
            client = data.draw(st.sampled_from(self.clients))
            self.clients.remove(client)
            try:
                self.group.leave(client.member_id, self.now)
            except UnknownMemberIdError:
                pass
            self.poll()

    def behave(self, client: Client) -> None:
        """What a consumer does on its own: heartbeat; rejoin when told to; sync a new generation."""
        try:
            rebalancing = self.group.heartbeat(client.member_id, client.generation, self.now)
            if not rebalancing.rebalance_in_progress:
                if client.synced != client.generation:
                    self.group.sync(client.member_id, client.generation, now_ms=self.now)
                    client.synced = client.generation
                    self.poll()
                return
        except UnknownMemberIdError:
            self.clients.remove(client)
            return
        except (IllegalGenerationError, RebalanceInProgressError):
            pass
        self.join(client, client.instance, client.topics)

    @rule(data=st.data())
    def stall(self, data) -> None:
        """A consumer stops calling poll (stuck processing, or a network partition)."""
        if self.clients:
            data.draw(st.sampled_from(self.clients)).stalled = True

    @rule(a=st.integers(1, 4), b=st.integers(0, 3))
    def change_partitions(self, a: int, b: int) -> None:
        self.group.update_topic_partitions({"a": a, "b": b}, self.now)
        self.poll()

    @rule(steps=st.integers(1, 12))
    def time_passes(self, steps: int) -> None:
        """Time passes in 100 ms steps; the consumers that are not stalled act at every step."""
        for _ in range(steps):
            self.now += 100
            self.poll()
            for client in list(self.clients):
                if client in self.clients and not client.stalled:
                    self.behave(client)

    # -- invariants -------------------------------------------------------------------------------------
    @invariant()
    def stable_generation_owns_each_partition_at_most_once(self) -> None:
        if self.group.state is GroupState.STABLE:
            seen = [tp for m in self.group.members.values() for tp in m.assignment]
            assert len(seen) == len(set(seen))
            for m in self.group.members.values():
                assert all(tp.topic in m.subscription.topics for tp in m.assignment)

    @invariant()
    def cooperative_members_never_hold_a_partition_together(self) -> None:
        if self.protocols == ["cooperative-sticky"]:
            members = list(self.group.members.values())
            for i, a in enumerate(members):
                for b in members[i + 1:]:
                    assert not set(a.owned) & set(b.owned), (a.member_id, b.member_id)
                    if self.group.state is GroupState.STABLE:
                        assert not set(a.owned) & set(b.assignment)

    @invariant()
    def membership_is_consistent(self) -> None:
        described = self.group.describe()
        assert [m.member_id for m in described.members] == list(self.group.members)
        assert (self.group.state is GroupState.EMPTY) <= (not self.group.members)
        if self.group.members:
            assert self.group.leader_id in self.group.members
        assert self.generations == sorted(set(self.generations))
        assert not self.generations or self.group.generation_id == self.generations[-1]


TestGroupMachine = GroupMachine.TestCase
TestGroupMachine.settings = settings(max_examples=400, stateful_step_count=60, deadline=None)
