"""Which sites have Celery workers taking jobs: heartbeats in Redis.

Triton's health says whether a site can serve a model, not whether anything is there
to take its async jobs: a site whose worker machine is gone kept getting jobs, which
waited in its queue until the operator drained it. Each site worker
(``CANGO_WORKER_SITE``) now writes a beat every ``WORKER_HEARTBEAT_SECONDS`` into one
sorted set (member ``<site>|<node>``, score the time); a site is *live* while one of
its workers beat within the last ``BEATS_LATE`` beats. A worker stopped cleanly
removes its member at once; a killed one is forgotten when its beats stop.

``workers.routing`` reads the live sites with the health snapshot (the same round
trip) and offers async jobs to live sites first. When no candidate site is live
(workers that do not beat yet, or all gone) jobs are routed by health alone and
wait in the queue, as before.
"""

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import redis
from django.conf import settings

from config.redis_client import redis_client

logger = logging.getLogger(__name__)

KEY = "cango:site-workers"
#: A site is live while one of its workers beat within this many intervals.
BEATS_LATE = 3
#: Members older than this many intervals are deleted by the next beat of anyone.
BEATS_FORGOTTEN = 100


def _member(site_slug: str, node: str) -> str:
    return f"{site_slug}|{node}"


def live_window_seconds() -> float:
    return BEATS_LATE * settings.WORKER_HEARTBEAT_SECONDS


def beat(site_slug: str, node: str, *, now: float | None = None) -> None:
    """Record that ``node`` (a worker of ``site_slug``) is alive now."""
    at = time.time() if now is None else now
    pipe = redis_client().pipeline(transaction=False)
    pipe.zadd(KEY, {_member(site_slug, node): at})
    pipe.zremrangebyscore(KEY, "-inf", at - BEATS_FORGOTTEN * settings.WORKER_HEARTBEAT_SECONDS)
    pipe.execute()


def forget(site_slug: str, node: str) -> None:
    """The worker stops: its site is no longer live through it."""
    redis_client().zrem(KEY, _member(site_slug, node))


def live_sites() -> frozenset[str]:
    """The sites with a live worker now (one Redis call; ``RedisError`` propagates)."""
    members = redis_client().zrangebyscore(KEY, time.time() - live_window_seconds(), "+inf")
    return live_sites_parse(members)


def live_sites_parse(members: Iterable[Any]) -> frozenset[str]:
    """The sites of the members of ``KEY`` read with ``ZRANGEBYSCORE`` from the window."""
    sites = set()
    for member in members:
        text = member.decode() if isinstance(member, bytes) else member
        sites.add(text.split("|", 1)[0])
    return frozenset(sites)


class Heartbeat:
    """A daemon thread that beats for one worker until stopped."""

    def __init__(self, site_slug: str, node: str) -> None:
        self.site_slug = site_slug
        self.node = node
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="site-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                beat(self.site_slug, self.node)
            except redis.RedisError:
                logger.warning("heartbeat: Redis unreachable", extra={"site": self.site_slug})
            self._stop.wait(settings.WORKER_HEARTBEAT_SECONDS)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        try:
            forget(self.site_slug, self.node)
        except redis.RedisError:
            logger.warning("heartbeat: could not remove the beat", extra={"site": self.site_slug})


_running: Heartbeat | None = None


def heartbeat_start(site_slug: str, node: str) -> None:
    """Start beating for this worker process (Celery's ``worker_ready``)."""
    global _running
    if _running is None:
        _running = Heartbeat(site_slug, node)
        _running.start()


def heartbeat_stop() -> None:
    """Stop beating and forget this worker (Celery's ``worker_shutting_down``)."""
    global _running
    if _running is not None:
        _running.stop()
        _running = None
