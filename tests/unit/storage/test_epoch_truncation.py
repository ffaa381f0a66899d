"""Where a follower cuts its log when it starts following a new leader (KIP-101 and KIP-279)."""

from __future__ import annotations

from pathlib import Path

from raystream.storage.epoch_cache import LeaderEpochCache


def cache(path: Path, *entries: tuple[int, int]) -> LeaderEpochCache:
    c = LeaderEpochCache(path)
    for epoch, start in entries:
        c.assign(epoch, start)
    return c


def test_a_follower_of_the_same_latest_epoch_keeps_what_the_leader_also_has(tmp_path):
    leader = cache(tmp_path / "l", (0, 0), (1, 100))
    assert leader.truncation_point([(0, 0), (1, 100)], 120, log_end_offset=150) == 120
    assert leader.truncation_point([(0, 0), (1, 100)], 170, log_end_offset=150) == 150


def test_a_suffix_written_under_a_deposed_leader_is_cut_at_the_end_of_the_epoch_both_know(tmp_path):
    leader = cache(tmp_path / "l", (0, 0), (2, 100))  # epoch 1's leader wrote 100.. that never replicated
    assert leader.truncation_point([(0, 0), (1, 100)], 105, log_end_offset=130) == 100


def test_the_follower_s_own_end_of_the_leader_s_epoch_bounds_the_cut(tmp_path):
    # KIP-279: the new leader C has epoch 1 at [100, 103) that follower B never saw; B led epoch 2 and
    # wrote [100, 105). C answers "epoch 1 ends at 103"; B's records 100..102 are epoch 2's, not epoch 1's.
    leader = cache(tmp_path / "c", (0, 0), (1, 100))
    follower = [(0, 0), (2, 100)]
    assert leader.truncation_point(follower, 105, log_end_offset=103) == 100


def test_a_follower_with_no_epoch_the_leader_knows_keeps_its_log(tmp_path):
    leader = cache(tmp_path / "l", (5, 1000))
    assert leader.truncation_point([(1, 0)], 40, log_end_offset=1200) == 40
    assert leader.truncation_point([], 0, log_end_offset=1200) == 0
