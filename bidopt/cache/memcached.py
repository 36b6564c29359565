"""``memcached://host:port``: a cache shared by every bidder, through pymemcache."""

from __future__ import annotations

from urllib.parse import urlsplit

from bidopt.cache.base import BidCache
from bidopt.errors import InvalidConfig


class MemcachedCache(BidCache):
    """pymemcache with a small pool and short timeouts: a slow or dead memcached must not
    stall a refresh for long (the bidder keeps serving from its near cache meanwhile)."""

    BATCH = 500
    shared = True

    def __init__(self, url: str, host: str, port: int) -> None:
        from pymemcache.client.base import PooledClient

        self.url = url
        self._client = PooledClient((host, port), connect_timeout=0.5, timeout=1.0, no_delay=True, max_pool_size=4)

    @classmethod
    def from_url(cls, url: str) -> MemcachedCache:
        parts = urlsplit(url)
        if not parts.hostname:
            raise InvalidConfig(f"memcached URL needs a host: memcached://host:port, got {url}")
        return cls(url, parts.hostname, parts.port or 11211)

    def set_many(self, values: dict[str, str]) -> None:
        items = list(values.items())
        for i in range(0, len(items), self.BATCH):
            failed = self._client.set_many(dict(items[i : i + self.BATCH]), noreply=False)
            if failed:
                raise ConnectionError(f"memcached did not store {len(failed)} keys")

    def get(self, key: str) -> str | None:
        value = self._client.get(key)
        return value.decode() if value is not None else None

    def get_many(self, keys: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for i in range(0, len(keys), self.BATCH):
            for key, value in self._client.get_many(keys[i : i + self.BATCH]).items():
                found[key] = value.decode()
        return found

    def add(self, key: str, value: str, expire: int = 0) -> bool:
        return bool(self._client.add(key, value, expire=expire, noreply=False))

    def touch(self, key: str, expire: int) -> bool:
        return bool(self._client.touch(key, expire=expire, noreply=False))

    def delete(self, key: str) -> None:
        self._client.delete(key, noreply=False)

    def close(self) -> None:
        self._client.close()
