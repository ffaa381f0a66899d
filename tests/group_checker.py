"""A Jepsen-style checker for consumer groups: what every member reported and received, checked afterwards.

Each poll of each member is recorded with the generation and member id it reports, the assignment it
reports, and the records it received together with the member's *delivery snapshot*
(``GroupMember.last_delivery``: when — CLOCK_MONOTONIC, comparable across the processes of one machine —
as which member and generation, owning what, the poll handed them out). Each successful commit is recorded
with the time it was sent. :meth:`GroupHistory.check` then asserts:

1. one owner per partition per generation: no two member ids report the same partition in one generation;
2. a member receives records only of partitions it owned in the generation it received them in;
3. ownership moves forward in time: taken in real-time order, the deliveries of a partition never go back
   to an earlier generation, and one generation's deliveries of a partition are one member's — so an old
   owner had stopped before a new one started;
4. nothing is skipped: each partition's deliveries, in real-time order, start at ``start`` and never jump
   ahead (a new owner starts at or below where the previous one stopped: the committed offset), and within
   one member's generation they are contiguous; nothing at or beyond the log end is delivered;
5. commits of a partition never go backwards, and everything below the final committed offset was delivered.

Pure Python (no Ray): used by the integration and fault suites and by the property test. Histories of
members in other processes travel as JSON lines (``GroupHistory(journal=path)`` / :meth:`GroupHistory.load_journal`).
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import defaultdict
from typing import Any

from raystream.protocol import TopicPartition


@dataclasses.dataclass(frozen=True)
class PollRecord:
    label: str
    reported_generation: int
    reported_member: str
    reported: tuple[tuple[str, int], ...]  # assignment() after the poll
    at: float | None = None  # the delivery snapshot (None: nothing received)
    generation: int = -1
    member_id: str = ""
    owned: tuple[tuple[str, int], ...] = ()
    offsets: tuple[tuple[str, int, tuple[int, ...]], ...] = ()  # (topic, partition, offsets received)


@dataclasses.dataclass(frozen=True)
class CommitRecord:
    label: str
    sent_at: float
    generation: int
    member_id: str
    offsets: tuple[tuple[str, int, int], ...]


def _tps(tps) -> tuple[tuple[str, int], ...]:
    return tuple(sorted((tp.topic, tp.partition) for tp in tps))


class GroupHistory:
    """Polls and commits of a group's members (thread-safe: members may record from several threads)."""

    def __init__(self, journal: str | None = None) -> None:
        """``journal``: also append every record to this file as a JSON line, flushed at once (a member
        process that is SIGKILLed leaves what it did; :meth:`load_journal` reads it back)."""
        self._journal = open(journal, "a", buffering=1) if journal else None  # noqa: SIM115 - lives with us
        self.polls: list[PollRecord] = []
        self.commits: list[CommitRecord] = []
        self.events: list[str] = []
        self._lock = threading.Lock()
        self._t0 = time.monotonic()

    # -- recording ------------------------------------------------------------------------------------------
    def event(self, text: str) -> None:
        with self._lock:
            self.events.append(f"[{time.monotonic() - self._t0:7.2f}s] {text}")

    def poll(self, label: str, consumer: Any, records: list) -> None:
        """Record one poll of ``consumer`` that returned ``records`` (Record objects, or (tp, offset))."""
        meta = consumer.group_metadata()
        reported = consumer.assignment()
        by_tp: dict[tuple[str, int], list[int]] = defaultdict(list)
        for r in records:
            tp, offset = ((TopicPartition(r.topic, r.partition), r.offset) if hasattr(r, "offset") else r)
            by_tp[(tp.topic, tp.partition)].append(offset)
        fields: dict[str, Any] = {}
        if records:
            d = consumer._group.last_delivery
            fields = dict(at=d.at, generation=d.generation_id, member_id=d.member_id, owned=_tps(d.owned),
                          offsets=tuple((t, p, tuple(o)) for (t, p), o in sorted(by_tp.items())))
        self._add(PollRecord(label, meta.generation_id, meta.member_id, _tps(reported), **fields))

    def _add(self, record: PollRecord | CommitRecord) -> None:
        with self._lock:
            (self.polls if isinstance(record, PollRecord) else self.commits).append(record)
            if self._journal is not None:
                kind = "poll" if isinstance(record, PollRecord) else "commit"
                self._journal.write(json.dumps({kind: dataclasses.asdict(record)}) + "\n")

    def commit(self, label: str, consumer: Any, offsets: dict) -> None:
        """Commit (``consumer.commit(offsets)``) and record it if it succeeded; raises what commit raised."""
        meta = consumer.group_metadata()
        sent_at = time.monotonic()
        consumer.commit(offsets)
        self._add(CommitRecord(label, sent_at, meta.generation_id, meta.member_id,
                               tuple(sorted((tp.topic, tp.partition, o) for tp, o in offsets.items()))))

    # -- other processes ------------------------------------------------------------------------------------
    def load_journal(self, path: str) -> None:
        """Add the records another process journaled (a torn last line — the process was killed — is
        skipped)."""
        def tuples(value):
            return tuple(tuples(v) for v in value) if isinstance(value, list) else value

        with open(path) as f:
            lines = f.read().split("\n")
        for line in lines:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            for kind, cls in (("poll", PollRecord), ("commit", CommitRecord)):
                if kind in entry:
                    record = cls(**{k: tuples(v) for k, v in entry[kind].items()})
                    with self._lock:
                        (self.polls if kind == "poll" else self.commits).append(record)

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()

    # -- checking -------------------------------------------------------------------------------------------
    def delivered(self) -> dict[tuple[str, int], set[int]]:
        out: dict[tuple[str, int], set[int]] = defaultdict(set)
        for p in self.polls:
            for topic, partition, offsets in p.offsets:
                out[(topic, partition)].update(offsets)
        return out

    def check(self, end_offsets: dict[TopicPartition, int], committed: dict[TopicPartition, int | None],
              start: int = 0) -> None:
        """Assert the invariants of the module docstring; ``end_offsets``: each partition's log end at the
        end, ``committed``: the group's final committed offsets."""
        problems: list[str] = []
        self._check_reports(problems)
        runs = self._check_deliveries(problems)
        self._check_offsets(runs, end_offsets, committed, start, problems)
        if problems:
            raise AssertionError("group checker found violations:\n  " + "\n  ".join(problems[:20]) +
                                 "\nevents:\n  " + "\n  ".join(self.events[-40:]))

    def _check_reports(self, problems: list[str]) -> None:
        owners: dict[tuple[int, tuple[str, int]], set[str]] = defaultdict(set)
        for p in self.polls:
            if p.reported and p.reported_generation < 0:
                problems.append(f"{p.label} reported {p.reported} outside any generation")
            for tp in p.reported:
                owners[(p.reported_generation, tp)].add(p.reported_member)
        for (generation, tp), members in sorted(owners.items()):
            if len(members) > 1:
                problems.append(f"generation {generation}: {tp} reported by {len(members)} members {sorted(members)}")

    def _check_deliveries(self, problems: list[str]) -> dict[tuple[str, int], list[tuple[float, int, str, tuple]]]:
        per_tp: dict[tuple[str, int], list[tuple[float, int, str, tuple]]] = defaultdict(list)
        for p in self.polls:
            for topic, partition, offsets in p.offsets:
                if (topic, partition) not in p.owned:
                    problems.append(f"{p.label} ({p.member_id}, generation {p.generation}) received "
                                    f"{topic}-{partition} {offsets[:3]}... without owning it (owned {p.owned})")
                if list(offsets) != sorted(offsets):
                    problems.append(f"{p.label} received {topic}-{partition} out of order: {offsets[:10]}")
                per_tp[(topic, partition)].append((p.at, p.generation, p.member_id, offsets))
        for tp, deliveries in per_tp.items():
            deliveries.sort(key=lambda d: d[0])
            owner_of: dict[int, str] = {}
            newest = -1
            for at, generation, member, _ in deliveries:
                if generation < newest:
                    problems.append(f"{tp}: {member} received it in generation {generation} at {at:.3f} after "
                                    f"generation {newest} had")
                newest = max(newest, generation)
                if owner_of.setdefault(generation, member) != member:
                    problems.append(f"{tp}: generation {generation} delivered to {owner_of[generation]} and "
                                    f"{member}")
        return per_tp

    def _check_offsets(self, runs, end_offsets, committed, start, problems) -> None:
        for tp, deliveries in runs.items():
            previous: tuple[int, str, int] | None = None  # (generation, member, last offset)
            for _, generation, member, offsets in deliveries:
                first = offsets[0]
                if previous is None:
                    if first != start:
                        problems.append(f"{tp}: first delivery starts at {first}, not {start}")
                elif (generation, member) == previous[:2]:
                    if first != previous[2] + 1:
                        problems.append(f"{tp}: {member} jumped from {previous[2]} to {first} in generation "
                                        f"{generation}")
                elif first > previous[2] + 1:
                    problems.append(f"{tp}: skipped {previous[2] + 1}..{first - 1} when it moved from "
                                    f"{previous[1]} to {member} (generation {generation})")
                previous = (generation, member, offsets[-1])
        ends = {(tp.topic, tp.partition): end for tp, end in end_offsets.items()}
        delivered = self.delivered()
        for tp, offsets in delivered.items():
            if tp in ends and max(offsets) >= ends[tp]:
                problems.append(f"{tp}: offset {max(offsets)} delivered at or beyond the log end {ends[tp]}")
        last: dict[tuple[str, int], tuple[float, int, str]] = {}
        for c in sorted(self.commits, key=lambda c: c.sent_at):
            for topic, partition, offset in c.offsets:
                before = last.get((topic, partition))
                if before is not None and offset < before[1]:
                    problems.append(f"{topic}-{partition}: commit went back from {before[1]} ({before[2]}) to "
                                    f"{offset} ({c.label}, generation {c.generation})")
                last[(topic, partition)] = (c.sent_at, offset, c.label)
        for tp, offset in committed.items():
            if offset is None:
                continue
            have = delivered.get((tp.topic, tp.partition), set())
            missing = [o for o in range(start, offset) if o not in have]
            if missing:
                problems.append(f"{tp}: committed {offset} but {len(missing)} offsets below it were never "
                                f"delivered (first {missing[:5]})")


def poll_and_commit(label: str, consumer: Any, history: GroupHistory, timeout: float = 0.2) -> list:
    """One step of a member in the checker's scenarios: poll, record, commit what was read. A commit the
    group refuses (the member's generation is gone, or a rebalance is completing) is part of the game."""
    from raystream.errors import CommitFailedError, RebalanceInProgressError

    records = consumer.poll(timeout=timeout)
    history.poll(label, consumer, records)
    if records:
        offsets = {}
        for r in records:  # what this poll processed: the next offset of each partition it read
            offsets[TopicPartition(r.topic, r.partition)] = r.offset + 1
        try:
            history.commit(label, consumer, offsets)
        except (CommitFailedError, RebalanceInProgressError) as exc:
            history.event(f"{label}: commit refused ({type(exc).__name__})")
    return records
