"""Broker directories (raystream.storage.broker_dirs): one broker per directory, enforced by real flock locks.

flock locks belong to an open file description, so two claims in this one process conflict exactly as two
processes would; one test also holds a lock from a child process.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time

import pytest

from raystream.errors import InvalidLogDirectoryError, LogDirectoryLockedError
from raystream.storage.broker_dirs import (
    LOCK_FILE,
    META_PROPERTIES,
    claim_broker_directory,
    read_meta_properties,
)


@pytest.fixture
def root(tmp_path):
    return tmp_path / "data" / "c"


def test_two_claimers_on_one_root_get_different_broker_directories(root):
    with claim_broker_directory(root, "c", 0) as a, claim_broker_directory(root, "c", 1) as b:
        assert (a.broker_id, b.broker_id) == (0, 1)
        assert (a.log_dir, b.log_dir) == (root / "broker-0", root / "broker-1")
        assert not a.legacy and a.locked and b.locked
        for claimed in (a, b):
            assert read_meta_properties(claimed.log_dir) == {"broker.id": str(claimed.broker_id), "cluster": "c"}
            assert sorted(p.name for p in claimed.log_dir.iterdir()) == [LOCK_FILE, META_PROPERTIES]  # no .tmp
        # a third claimer while both are held: a new directory of its own
        with claim_broker_directory(root, "c", 5) as c:
            assert (c.broker_id, c.log_dir.name) == (5, "broker-5")


def test_a_released_directory_is_reclaimed_with_its_id_lowest_id_first(root):
    first = claim_broker_directory(root, "c", 3)
    second = claim_broker_directory(root, "c", 4)
    first.release()
    second.release()
    assert not first.locked
    again = claim_broker_directory(root, "c", 9)  # the proposal is ignored: existing directories come first
    assert (again.broker_id, again.log_dir) == (3, root / "broker-3")
    other = claim_broker_directory(root, "c", 10)
    assert (other.broker_id, other.log_dir) == (4, root / "broker-4")
    again.release()
    other.release()
    assert not (root / "broker-9").exists() and not (root / "broker-10").exists()


def test_the_legacy_layout_is_claimed_as_the_root_itself(root):
    root.mkdir(parents=True)
    (root / META_PROPERTIES).write_text("broker.id=7\ncluster=c\n")
    (root / "topic-0").mkdir()  # partitions directly in the root
    (root / "topic-0" / "raystream-log.meta").write_bytes(b"x")
    with claim_broker_directory(root, "c", 0) as legacy:
        assert (legacy.broker_id, legacy.log_dir, legacy.legacy) == (7, root, True)
        assert (root / LOCK_FILE).exists()
        with claim_broker_directory(root, "c", 8) as newcomer:  # another node sharing the old root
            assert (newcomer.broker_id, newcomer.log_dir, newcomer.legacy) == (8, root / "broker-8", False)
    with claim_broker_directory(root, "c", 0) as back:
        assert (back.broker_id, back.log_dir) == (7, root)


def test_a_lock_held_by_another_process_is_skipped_and_reclaimed_after_it_exits(root):
    claim_broker_directory(root, "c", 0).release()  # broker-0 exists, unlocked
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom raystream.storage.broker_dirs import claim_broker_directory\n"
         f"d = claim_broker_directory({str(root)!r}, 'c', 99)\nprint(d.broker_id, flush=True)\nsys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "0"
        with claim_broker_directory(root, "c", 1) as mine:
            assert mine.broker_id == 1
    finally:
        child.communicate("", timeout=30)  # the child exits: the kernel drops its lock
    with claim_broker_directory(root, "c", 2) as back:
        assert back.broker_id == 0


def test_a_predecessor_on_the_same_node_is_waited_for(root):
    predecessor = claim_broker_directory(root, "c", 0, owner="node-a")
    threading.Timer(0.2, predecessor.release).start()
    started = time.monotonic()
    with claim_broker_directory(root, "c", 1, owner="node-a", same_owner_wait_s=10) as successor:
        assert successor.broker_id == 0 and time.monotonic() - started >= 0.15


def test_another_nodes_lock_is_not_waited_for_and_a_stuck_predecessor_only_briefly(root):
    with claim_broker_directory(root, "c", 0, owner="node-a"):
        assert (root / "broker-0" / LOCK_FILE).read_text().startswith("owner=node-a\n")
        started = time.monotonic()
        with claim_broker_directory(root, "c", 1, owner="node-b", same_owner_wait_s=10) as b:
            assert b.broker_id == 1 and time.monotonic() - started < 5
            with claim_broker_directory(root, "c", 2, owner="node-a", same_owner_wait_s=0.2) as a2:
                assert a2.broker_id == 2  # waited 0.2 s for broker-0, then a new directory


def test_a_proposed_directory_locked_or_foreign_is_refused(root):
    root.mkdir(parents=True)
    (root / META_PROPERTIES).write_text("broker.id=0\ncluster=c\n")
    (root / "broker-1").mkdir()  # topic "broker", partition 1, in the legacy layout
    (root / "broker-1" / "raystream-log.meta").write_bytes(b"x")
    with claim_broker_directory(root, "c", 5) as legacy:
        assert legacy.broker_id == 0
        with pytest.raises(InvalidLogDirectoryError, match="not a broker directory"):
            claim_broker_directory(root, "c", 1)
        with claim_broker_directory(root, "c", 2):
            # broker-3 being created by someone else (locked, no meta.properties yet)
            (root / "broker-3").mkdir()
            fd = os.open(root / "broker-3" / LOCK_FILE, os.O_RDWR | os.O_CREAT)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            try:
                with pytest.raises(LogDirectoryLockedError, match="another process is using this directory"):
                    claim_broker_directory(root, "c", 3)
            finally:
                os.close(fd)


def test_a_half_created_directory_is_adopted_and_other_clusters_are_left_alone(root):
    (root / "broker-4").mkdir(parents=True)
    (root / "broker-4" / LOCK_FILE).touch()  # a claimer died between mkdir and meta.properties
    (root / "broker-0").mkdir()
    (root / "broker-0" / META_PROPERTIES).write_text("broker.id=0\ncluster=other\n")
    with claim_broker_directory(root, "c", 4) as d:
        assert (d.broker_id, d.log_dir) == (4, root / "broker-4")
        assert read_meta_properties(root / "broker-0")["cluster"] == "other"  # untouched
