"""The state in Redis (``T2I_STATE=redis://host:6379/0``): several servers (replicas) act as one.

Each call is one Redis command, or a WATCH/MULTI transaction for ``update`` (retried when another
client changed the key meanwhile). Keys carry the prefix ``t2i:`` (``?prefix=`` in the URL changes
it, so that several deployments can share one Redis). Timeouts are short (``SOCKET_TIMEOUT_S``): a
Redis that is down or unreachable makes the calls that need it fail at once with ``StateUnavailable``
(503), never hang; so does a command Redis refuses (out of memory past ``maxmemory``, a read-only
replica, a wrong password). The client reconnects by itself when Redis is back.
"""

from __future__ import annotations

import math
import time
from typing import Any, Iterable
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from t2i_core.common.errors import StateUnavailable
from t2i_core.state.store import Change, StateStore, Subscription

#: seconds to connect, and to wait for one answer
SOCKET_TIMEOUT_S = 2.0
DEFAULT_PREFIX = "t2i:"


def _ms(ttl_s: float) -> int:
    return max(1, int(math.ceil(ttl_s * 1000)))


class RedisState(StateStore):
    kind = "redis"
    shared = True

    def __init__(self, url: str):
        import redis

        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.prefix = query.pop("prefix", [DEFAULT_PREFIX])[0]
        rest = urlencode(query, doseq=True)
        self.url = urlunsplit((parts.scheme, parts.netloc, parts.path, rest, ""))
        self._redis = redis
        self.client = redis.Redis.from_url(
            self.url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S,
            health_check_interval=15, retry_on_timeout=False)

    def _k(self, key: str) -> str:
        return self.prefix + key

    def _do(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (self._redis.ConnectionError, self._redis.TimeoutError) as exc:
            raise StateUnavailable(f"the shared state (Redis at {self._where()}) cannot be reached: {exc}") from None
        except self._redis.WatchError:
            raise
        except self._redis.RedisError as exc:  # e.g. OOM past maxmemory, READONLY replica, NOAUTH
            raise StateUnavailable(f"the shared state (Redis at {self._where()}) refused a command: {exc}") from None

    def _where(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.hostname}:{parts.port or 6379}"

    def get(self, key: str) -> bytes | None:
        return self._do(self.client.get, self._k(key))

    def get_many(self, keys: Iterable[str]) -> list[bytes | None]:
        wanted = [self._k(k) for k in keys]
        return list(self._do(self.client.mget, wanted)) if wanted else []

    def put(self, key: str, value: bytes, ttl_s: float | None = None, *, only_if_absent: bool = False) -> bool:
        done = self._do(self.client.set, self._k(key), value, px=None if ttl_s is None else _ms(ttl_s),
                        nx=only_if_absent)
        return bool(done)

    def delete(self, *keys: str) -> int:
        return int(self._do(self.client.delete, *(self._k(k) for k in keys))) if keys else 0

    def update(self, key: str, change: Change, ttl_s: float | None = None) -> bytes | None:
        name = self._k(key)
        outcome: dict[str, bytes | None] = {}

        def attempt(pipe: Any) -> None:
            old = pipe.get(name)
            new = change(old)
            outcome["value"] = old if new is None else new
            if new is None:
                return
            pipe.multi()
            if ttl_s is None:
                pipe.set(name, new, keepttl=True)
            else:
                pipe.set(name, new, px=_ms(ttl_s))

        self._do(self.client.transaction, attempt, name)
        return outcome.get("value")

    def incr(self, key: str, by: int = 1, ttl_s: float | None = None) -> int:
        pipe = self.client.pipeline(transaction=True)
        pipe.incrby(self._k(key), by)
        if ttl_s is not None:
            pipe.pexpire(self._k(key), _ms(ttl_s))
        return int(self._do(pipe.execute)[0])

    def put_many(self, values: dict[str, bytes], ttl_s: float | None = None) -> None:
        pipe = self.client.pipeline(transaction=False)
        for key, value in values.items():
            pipe.set(self._k(key), value, px=None if ttl_s is None else _ms(ttl_s))
        self._do(pipe.execute)

    def index_add(self, index: str, member: str, score: float, ttl_s: float | None = None) -> None:
        if ttl_s is None:
            self._do(self.client.zadd, self._k(index), {member: score})
            return
        pipe = self.client.pipeline(transaction=True)
        pipe.zadd(self._k(index), {member: score})
        pipe.pexpire(self._k(index), _ms(ttl_s))
        self._do(pipe.execute)

    def index_remove(self, index: str, *members: str) -> int:
        return int(self._do(self.client.zrem, self._k(index), *members)) if members else 0

    def index_range(self, index: str, *, min_score: float = float("-inf"), max_score: float = float("inf"),
                    limit: int = 100, newest_first: bool = True) -> list[tuple[str, float]]:
        lo = "-inf" if min_score == float("-inf") else repr(min_score)
        hi = "+inf" if max_score == float("inf") else repr(max_score)
        if newest_first:
            rows = self._do(self.client.zrevrangebyscore, self._k(index), hi, lo, start=0, num=limit, withscores=True)
        else:
            rows = self._do(self.client.zrangebyscore, self._k(index), lo, hi, start=0, num=limit, withscores=True)
        return [(m.decode() if isinstance(m, bytes) else m, float(s)) for m, s in rows]

    def index_count(self, index: str) -> int:
        return int(self._do(self.client.zcard, self._k(index)))

    def publish(self, channel: str, message: bytes) -> None:
        self._do(self.client.publish, self._k(channel), message)

    def subscribe(self, *channels: str) -> "RedisSubscription":
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self._do(pubsub.subscribe, *(self._k(c) for c in channels))
        return RedisSubscription(self, pubsub)

    def close(self) -> None:
        self.client.close()


class RedisSubscription(Subscription):
    """Redis pub/sub. If the connection drops, ``get`` raises ``StateUnavailable``; the caller
    subscribes again (and reads the durable values it might have missed)."""

    def __init__(self, state: RedisState, pubsub: Any):
        self.state = state
        self.pubsub = pubsub

    def get(self, timeout_s: float) -> tuple[str, bytes] | None:
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:  # a subscribe confirmation comes back as None before the timeout: wait on
            message = self.state._do(self.pubsub.get_message, timeout=max(0.0, deadline - time.monotonic()))
            if message is not None and message.get("type") == "message":
                break
            if time.monotonic() >= deadline:
                return None
        channel = message["channel"].decode() if isinstance(message["channel"], bytes) else message["channel"]
        return channel[len(self.state.prefix):], message["data"]

    def close(self) -> None:
        try:
            self.pubsub.close()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass
