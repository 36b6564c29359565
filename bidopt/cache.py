"""Bid caches, chosen by URL scheme: in-process (``memory://``) or memcached (``memcached://host:port``).

The bidder publishes every active run's bid table and domain multipliers here,
namespaced by entity and run, so that other bidders can read them too:

* ``bidopt:<entity>:<run_id>:bid:<segment key, URL-quoted>`` -> bid CPM as text
* ``bidopt:<entity>:<run_id>:dm:<domain, URL-quoted>`` -> multiplier as text
* ``bidopt:<entity>:<run_id>:meta`` -> JSON: features in key order, checksum, rows
* ``bidopt:<entity>:split`` -> JSON: the active split (split id, runs and percentages)

Keys longer than memcached's 250 bytes are replaced by ``bidopt:h:<sha1>``. The
bidder's own request path reads an in-process copy (the near cache), never this.
"""

from __future__ import annotations

import hashlib
import json
import threading
from abc import ABC, abstractmethod
from urllib.parse import quote, urlsplit

from bidopt.errors import InvalidConfig

MAX_KEY = 250


def cache_key(*parts: str) -> str:
    key = "bidopt:" + ":".join(quote(p, safe="") for p in parts)
    return key if len(key) <= MAX_KEY else "bidopt:h:" + hashlib.sha1(key.encode()).hexdigest()


class BidCache(ABC):
    url: str

    @abstractmethod
    def set_many(self, values: dict[str, str]) -> None: ...

    @abstractmethod
    def get(self, key: str) -> str | None: ...

    def publish_run(self, entity_code: str, run_id: str, bids: dict[str, float], multipliers: dict[str, float],
                    meta: dict) -> None:
        values = {cache_key(entity_code, run_id, "bid", k): repr(v) for k, v in bids.items()}
        values.update({cache_key(entity_code, run_id, "dm", d): repr(m) for d, m in multipliers.items()})
        values[cache_key(entity_code, run_id, "meta")] = json.dumps(meta)
        self.set_many(values)

    def publish_split(self, entity_code: str, split: dict) -> None:
        self.set_many({cache_key(entity_code, "split"): json.dumps(split)})

    def get_bid(self, entity_code: str, run_id: str, segment_key: str) -> float | None:
        value = self.get(cache_key(entity_code, run_id, "bid", segment_key))
        return float(value) if value is not None else None

    def get_multiplier(self, entity_code: str, run_id: str, domain: str) -> float | None:
        value = self.get(cache_key(entity_code, run_id, "dm", domain))
        return float(value) if value is not None else None

    def get_json(self, *parts: str) -> dict | None:
        value = self.get(cache_key(*parts))
        return json.loads(value) if value is not None else None

    def close(self) -> None:  # noqa: B027
        """Release connections."""


class InProcessCache(BidCache):
    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._data: dict[str, str] = {}
        self._lock = threading.Lock()

    def set_many(self, values: dict[str, str]) -> None:
        with self._lock:
            self._data.update(values)

    def get(self, key: str) -> str | None:
        return self._data.get(key)


class MemcachedCache(BidCache):
    """pymemcache with a small pool and short timeouts: a slow or dead memcached must not
    stall a refresh for long (the bidder keeps serving from its near cache meanwhile)."""

    BATCH = 500

    def __init__(self, url: str, host: str, port: int) -> None:
        from pymemcache.client.base import PooledClient

        self.url = url
        self._client = PooledClient((host, port), connect_timeout=0.5, timeout=1.0, no_delay=True,
                                    max_pool_size=4)

    def set_many(self, values: dict[str, str]) -> None:
        items = list(values.items())
        for i in range(0, len(items), self.BATCH):
            failed = self._client.set_many(dict(items[i:i + self.BATCH]), noreply=False)
            if failed:
                raise ConnectionError(f"memcached did not store {len(failed)} keys")

    def get(self, key: str) -> str | None:
        value = self._client.get(key)
        return value.decode() if value is not None else None

    def close(self) -> None:
        self._client.close()


def open_cache(url: str) -> BidCache:
    parts = urlsplit(url)
    if parts.scheme == "memory":
        return InProcessCache(url)
    if parts.scheme == "memcached":
        if not parts.hostname:
            raise InvalidConfig(f"memcached URL needs a host: memcached://host:port, got {url}")
        return MemcachedCache(url, parts.hostname, parts.port or 11211)
    raise InvalidConfig(f"unknown cache URL scheme {parts.scheme!r}: use memory:// or memcached://host:port")
