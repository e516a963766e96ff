"""API rate and in-flight limits per key and per tenant, held in Redis.

Every web process shares the same Redis sorted sets, so a limit holds however many
processes serve the API. One Lua script checks all four limits and, only when all
four allow it, records the request in all of them: one round trip on the hot path,
and a refused request consumes nothing.

- **Rate**: a sliding-window log. Each admitted request is a member scored with its
  admission time (Redis's clock, so web hosts need not agree on the time); a request
  is admitted when fewer than ``limit`` members lie in the last 60 seconds. Unlike a
  fixed window it never lets ``2 × limit`` through around a window boundary: *any*
  60-second interval holds at most ``limit`` admissions. It costs one member per
  admitted request, at most ``limit`` per key or tenant.
- **In flight**: a sorted set of slots scored with their *expiry* time. A slot is
  removed when its response has been sent; one whose process died is dropped once
  its expiry passes, so a crash can never hold a slot for longer than
  ``RATE_LIMIT_IN_FLIGHT_TTL_SECONDS``.

Giving slots back costs no round trip of its own while requests keep coming: a
process queues its releases and the next admission's script call removes them
first; a flusher thread sends what is still queued after ``RELEASE_FLUSH_SECONDS``
when no request comes. Until then a slot counts a little longer than its request
ran, which errs on the safe side.

Redis errors while admitting are not caught here: the API maps them to a fast 503
in one place. A release that fails is logged; its slots expire as a crash's would.
The four keys of one call live in different hash slots, so Redis Cluster would need
them under one hash tag; the project runs a single Redis.
"""

import functools
import logging
import math
import os
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Literal

import redis
from django.conf import settings
from redis.commands.core import Script

from config.redis_client import redis_client

from .models import Tenant

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60
# How long a queued release may wait for the next admission before it is sent alone.
RELEASE_FLUSH_SECONDS = 0.05
_UNLIMITED = -1

Scope = Literal["key", "tenant"]
Kind = Literal["rate", "in_flight"]

# KEYS: key rate log, tenant rate log, key slots, tenant slots, then (ARGV[8] = 1) a
#       string key to read, then the slot sets of queued releases (any key or tenant).
# ARGV: the four limits in that order (-1: none), window ms, slot lifetime ms, member,
#       reads (0 or 1), then the member to remove from each queued release's slot set.
# Returns {refused (0 = admitted, 1..4 = the KEYS index of the refusing limit),
#          retry_after_ms, key_remaining, key_reset_ms, tenant_remaining, tenant_reset_ms,
#          the read key's value (nil when absent or not asked for)}.
# A concurrency refusal cannot know when a slot frees: it asks for a retry in 1 s.
_ACQUIRE_LUA = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local window = tonumber(ARGV[5])
local ttl = tonumber(ARGV[6])
local member = ARGV[7]
local reads = tonumber(ARGV[8])
local value = false
if reads == 1 then value = redis.call('GET', KEYS[5]) end
local result = {0, 0, -1, 0, -1, 0, value}
local counted = {}

for j = 5 + reads, #KEYS do
  redis.call('ZREM', KEYS[j], ARGV[j + 4 - reads])
end

for i = 1, 2 do
  local limit = tonumber(ARGV[i])
  if limit >= 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - window)
    local count = redis.call('ZCARD', KEYS[i])
    if count >= limit then
      local wait = window
      if limit > 0 then
        -- The admission that must leave the window before one more request fits.
        local blocking = redis.call('ZRANGE', KEYS[i], count - limit, count - limit, 'WITHSCORES')
        wait = tonumber(blocking[2]) + window - now
      end
      return {i, wait, 0, wait, 0, wait, value}
    end
    local reset = window
    if count > 0 then
      local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
      reset = tonumber(oldest[2]) + window - now
    end
    counted[i] = true
    result[2 * i + 1] = limit - count - 1
    result[2 * i + 2] = reset
  end
end

for i = 3, 4 do
  local limit = tonumber(ARGV[i])
  if limit >= 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    if redis.call('ZCARD', KEYS[i]) >= limit then
      -- Refused: this request takes nothing, so the rate figures exclude it.
      for j = 1, 2 do
        if counted[j] then result[2 * j + 1] = result[2 * j + 1] + 1 end
      end
      result[1] = i
      result[2] = 1000
      return result
    end
  end
end

for i = 1, 2 do
  if counted[i] then
    redis.call('ZADD', KEYS[i], now, member)
    redis.call('PEXPIRE', KEYS[i], window)
  end
end
for i = 3, 4 do
  if tonumber(ARGV[i]) >= 0 then
    redis.call('ZADD', KEYS[i], now + ttl, member)
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return result
"""

_REFUSALS: dict[int, tuple[Kind, Scope]] = {
    1: ("rate", "key"),
    2: ("rate", "tenant"),
    3: ("in_flight", "key"),
    4: ("in_flight", "tenant"),
}


@dataclass(frozen=True, slots=True)
class Limits:
    """What one tenant's keys may do; ``None`` is no limit."""

    key_per_minute: int | None
    key_in_flight: int | None
    tenant_per_minute: int | None
    tenant_in_flight: int | None


@dataclass(frozen=True, slots=True)
class RateState:
    """The rate limit nearest exhaustion after an admission: the ``RateLimit-*`` headers."""

    limit: int
    remaining: int
    reset_seconds: int


@dataclass(frozen=True, slots=True)
class Admission:
    """An admitted request; ``release`` must be called once its response is sent."""

    slot_keys: tuple[str, ...]
    member: str
    rate: RateState | None
    #: The value of ``admit(read=...)``'s key, read in the same round trip.
    read_value: bytes | None = None


class LimitExceeded(Exception):
    """A request refused by one limit; ``api/errors.py`` maps it to a 429."""

    def __init__(
        self,
        *,
        kind: Kind,
        scope: Scope,
        limit: int,
        retry_after_seconds: int,
        rate: RateState | None,
        read_value: bytes | None = None,
    ) -> None:
        self.read_value = read_value
        self.kind = kind
        self.scope = scope
        self.limit = limit
        self.retry_after_seconds = retry_after_seconds
        self.rate = rate
        super().__init__(self.message)

    @property
    def code(self) -> str:
        return "rate_limited" if self.kind == "rate" else "concurrency_limited"

    @property
    def message(self) -> str:
        who = "this API key" if self.scope == "key" else "your organisation (all keys together)"
        if self.kind == "rate":
            what = f"{self.limit} requests per minute"
        else:
            what = f"{self.limit} requests in flight"
        return (
            f"Limit of {what} for {who} reached; retry in {self.retry_after_seconds} s."
            if self.limit
            else f"API calls are disabled for {who}."
        )


def limits_for(tenant: Tenant) -> Limits:
    """The tenant's tier limits from settings, with its own overrides applied."""
    tiers = settings.RATE_LIMIT_TIERS
    tier = tiers.get(tenant.tier)
    if tier is None:
        tier = tiers[Tenant.Tier.STANDARD]

    def pick(override: int | None, name: str) -> int | None:
        return override if override is not None else tier.get(name)

    return Limits(
        key_per_minute=pick(tenant.limit_key_per_minute, "key_per_minute"),
        key_in_flight=pick(tenant.limit_key_in_flight, "key_in_flight"),
        tenant_per_minute=pick(tenant.limit_tenant_per_minute, "tenant_per_minute"),
        tenant_in_flight=pick(tenant.limit_tenant_in_flight, "tenant_in_flight"),
    )


@functools.cache
def _acquire_script() -> Script:
    """Registered once per process: calls go by EVALSHA (redis-py loads it on a miss)."""
    return redis_client().register_script(_ACQUIRE_LUA)


def _redis_keys(*, key_id: int, tenant_id: int) -> tuple[str, str, str, str]:
    prefix = settings.RATE_LIMIT_KEY_PREFIX
    return (
        f"{prefix}:key:{key_id}:rate",
        f"{prefix}:tenant:{tenant_id}:rate",
        f"{prefix}:key:{key_id}:slots",
        f"{prefix}:tenant:{tenant_id}:slots",
    )


def _seconds(milliseconds: int) -> int:
    return max(1, math.ceil(milliseconds / 1000))


def _arg(limit: int | None) -> int:
    return _UNLIMITED if limit is None else limit


def _rate_state(
    limits: Limits,
    key_remaining: int,
    key_reset_ms: int,
    tenant_remaining: int,
    tenant_reset_ms: int,
) -> RateState | None:
    """The rate limit with the fewest requests left (the IETF draft's advice)."""
    states = []
    if limits.key_per_minute is not None:
        states.append(RateState(limits.key_per_minute, key_remaining, _seconds(key_reset_ms)))
    if limits.tenant_per_minute is not None:
        states.append(
            RateState(limits.tenant_per_minute, tenant_remaining, _seconds(tenant_reset_ms))
        )
    return min(states, key=lambda state: state.remaining, default=None)


def limited(limits: Limits) -> bool:
    """Whether any of the four limits applies (else ``admit`` sends nothing)."""
    return any(
        limit is not None
        for limit in (
            limits.key_per_minute,
            limits.tenant_per_minute,
            limits.key_in_flight,
            limits.tenant_in_flight,
        )
    )


def admit(
    *,
    key_id: int,
    tenant_id: int,
    limits: Limits,
    window_ms: int = WINDOW_SECONDS * 1000,
    slot_ttl_ms: int | None = None,
    read: str | None = None,
) -> Admission:
    """Admit one request against all four limits at once, or raise ``LimitExceeded``.

    ``read`` names a Redis string to read in the same round trip (authentication
    checks its key-cache epoch this way); its value comes back on the admission or
    the refusal. With no limit at all nothing is sent, so ``read`` is not read.

    ``window_ms`` and ``slot_ttl_ms`` are parameters so tests can shorten them; the
    API uses the 60-second window and ``RATE_LIMIT_IN_FLIGHT_TTL_SECONDS``.
    """
    ordered = (
        limits.key_per_minute,
        limits.tenant_per_minute,
        limits.key_in_flight,
        limits.tenant_in_flight,
    )
    if not limited(limits):
        return Admission(slot_keys=(), member="", rate=None)  # nothing to count: no round trip
    if slot_ttl_ms is None:
        slot_ttl_ms = settings.RATE_LIMIT_IN_FLIGHT_TTL_SECONDS * 1000
    keys = _redis_keys(key_id=key_id, tenant_id=tenant_id)
    member = secrets.token_hex(8)
    queued = _releases.take()
    try:
        (refused, retry_ms, key_left, key_reset, tenant_left, tenant_reset, read_value) = (
            _acquire_script()(
                keys=[*keys, *([read] if read else []), *(name for name, _ in queued)],
                args=[
                    *(_arg(limit) for limit in ordered),
                    window_ms,
                    slot_ttl_ms,
                    member,
                    1 if read else 0,
                    *(queued_member for _, queued_member in queued),
                ],
            )
        )
    except redis.RedisError:
        _releases.put_back(queued)
        raise
    if refused:
        kind, scope = _REFUSALS[refused]
        limit = ordered[refused - 1] or 0  # the script only refuses on a limit it was given
        retry_after = _seconds(retry_ms)
        if kind == "rate":
            rate: RateState | None = RateState(limit, 0, retry_after)
        else:
            rate = _rate_state(limits, key_left, key_reset, tenant_left, tenant_reset)
        raise LimitExceeded(
            kind=kind,
            scope=scope,
            limit=limit,
            retry_after_seconds=retry_after,
            rate=rate,
            read_value=read_value,
        )
    slot_keys = tuple(
        name for name, limit in zip(keys[2:], ordered[2:], strict=True) if limit is not None
    )
    return Admission(
        slot_keys=slot_keys,
        member=member,
        rate=_rate_state(limits, key_left, key_reset, tenant_left, tenant_reset),
        read_value=read_value,
    )


def release(admission: Admission) -> None:
    """Give the request's in-flight slots back, after its response was sent.

    Queued for the next admission's script call (or the flusher), so it costs the
    request no round trip of its own.
    """
    if admission.slot_keys:
        _releases.add([(name, admission.member) for name in admission.slot_keys])


def releases_flush() -> None:
    """Send every queued release now, without waiting for the flusher (tests)."""
    _releases.flush()


class _ReleaseQueue:
    """This process's released slots, waiting to ride on the next admission.

    A daemon thread, started on first use in each process (granian forks its
    workers), sends whatever is still queued ``RELEASE_FLUSH_SECONDS`` after a
    release, so an idle process never keeps slots taken. When Redis cannot be
    reached the slots stay taken until they expire; that is logged, not raised:
    the callers already have their answers.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[str, str]] = []
        self._wake = threading.Event()
        self._flusher_pid = 0

    def add(self, pairs: list[tuple[str, str]]) -> None:
        with self._lock:
            self._pending.extend(pairs)
            if self._flusher_pid != os.getpid():
                self._flusher_pid = os.getpid()
                threading.Thread(target=self._run, name="ratelimit-release", daemon=True).start()
        self._wake.set()

    def take(self) -> list[tuple[str, str]]:
        with self._lock:
            taken, self._pending = self._pending, []
        return taken

    def put_back(self, pairs: list[tuple[str, str]]) -> None:
        if pairs:
            with self._lock:
                self._pending[:0] = pairs
            self._wake.set()

    def flush(self) -> None:
        pairs = self.take()
        if not pairs:
            return
        try:
            with redis_client().pipeline(transaction=False) as pipe:
                for name, member in pairs:
                    pipe.zrem(name, member)
                pipe.execute()
        except redis.RedisError:
            logger.warning(
                "rate limits: %d in-flight slots not released; they expire after %s s",
                len(pairs),
                settings.RATE_LIMIT_IN_FLIGHT_TTL_SECONDS,
                exc_info=True,
            )

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            time.sleep(RELEASE_FLUSH_SECONDS)
            self.flush()


_releases = _ReleaseQueue()
