"""Which Redis client a store works on: the clients it accepts (:data:`RedisClient`, one server
or a Redis Cluster), and the one ``RedisStore.from_url`` makes, whose ``timeout`` bounds every
call and which hides no outage behind retries of its own."""

from __future__ import annotations

from typing import TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

__all__ = ["RedisClient", "client_from_url"]

#: The clients a store works on: one Redis server, or a Redis Cluster.
RedisClient: TypeAlias = "aioredis.Redis | aioredis.RedisCluster"


def client_from_url(url: str, *, timeout: float, cluster: bool) -> RedisClient:
    """A client on a connection pool of its own, every call bounded by ``timeout`` seconds."""
    if cluster:
        # One retry, after the client has refreshed its map of the cluster (a failover); not
        # redis-py's default of three with backoff, which would hide an outage for seconds.
        return aioredis.RedisCluster.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 1))
    return aioredis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout,
        retry_on_timeout=False,
    )
