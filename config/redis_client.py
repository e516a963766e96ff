"""One pooled Redis client per process for the hot path (auth cache epoch, health)."""

import functools

import redis
from django.conf import settings


@functools.cache
def redis_client() -> redis.Redis:
    """Short timeouts: a dead Redis must make requests fall back or fail fast, not hang."""
    return redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=0.5, socket_timeout=0.5)
