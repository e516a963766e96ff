"""Site worker heartbeats in Redis, and what routing reads of them."""

import time
from typing import cast

import pytest

from config.redis_client import redis_client
from workers import liveness, routing


def _live() -> frozenset[str]:
    return routing.snapshot_load().live_sites


def test_a_site_is_live_while_one_of_its_workers_beat_recently(settings):
    settings.WORKER_HEARTBEAT_SECONDS = 5
    now = time.time()
    liveness.beat("a", "a@host-1", now=now - 14)  # within 3 intervals
    liveness.beat("b", "b@host-1", now=now - 16)  # late: the worker stopped beating
    liveness.beat("b", "b@host-2", now=now - 20)
    assert _live() == frozenset({"a"})
    liveness.beat("b", "b@host-2", now=now)
    assert _live() == frozenset({"a", "b"})


def test_a_worker_stopped_cleanly_is_forgotten_at_once_and_old_beats_are_deleted(settings):
    settings.WORKER_HEARTBEAT_SECONDS = 5
    now = time.time()
    liveness.beat("a", "a@host-1", now=now)
    liveness.forget("a", "a@host-1")
    assert _live() == frozenset()
    liveness.beat("gone", "gone@host", now=now - 5 * liveness.BEATS_FORGOTTEN - 1)
    liveness.beat("a", "a@host-1", now=now)
    members = cast(list[bytes], redis_client().zrange(liveness.KEY, 0, -1))
    assert members == [b"a|a@host-1"]


def test_the_heartbeat_thread_beats_until_stopped_then_removes_its_beat(settings):
    settings.WORKER_HEARTBEAT_SECONDS = 0.05
    liveness.heartbeat_start("a", "a@host-1")
    try:
        first = _beat_time()
        time.sleep(0.2)
        assert _beat_time() > first
    finally:
        liveness.heartbeat_stop()
    assert redis_client().zscore(liveness.KEY, "a|a@host-1") is None


def _beat_time() -> float:
    """The worker's last beat, waiting up to 2 s for its first."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        score = redis_client().zscore(liveness.KEY, "a|a@host-1")
        if score is not None:
            return float(score)
        time.sleep(0.01)
    pytest.fail("the heartbeat thread never beat")
