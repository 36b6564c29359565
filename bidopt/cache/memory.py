"""``memory://``: a cache in this process only (the embedded default)."""

from __future__ import annotations

import threading
import time

from bidopt.cache.base import BidCache


class InProcessCache(BidCache):
    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._data: dict[str, str] = {}
        self._expires: dict[str, float] = {}  # keys stored by add() with an expiry -> when they go
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> InProcessCache:
        return cls(url)

    def set_many(self, values: dict[str, str]) -> None:
        with self._lock:
            self._data.update(values)
            for key in values:  # as memcached's set: a stored key has no expiry unless given one
                self._expires.pop(key, None)

    def get(self, key: str) -> str | None:
        self._expire(key)
        return self._data.get(key)

    def get_many(self, keys: list[str]) -> dict[str, str]:
        for key in keys:
            self._expire(key)
        data = self._data
        return {k: data[k] for k in keys if k in data}

    def add(self, key: str, value: str, expire: int = 0) -> bool:
        with self._lock:
            self._expire(key)
            if key in self._data:
                return False
            self._data[key] = value
            if expire:
                self._expires[key] = time.monotonic() + expire
            return True

    def touch(self, key: str, expire: int) -> bool:
        with self._lock:
            self._expire(key)
            if key not in self._data:
                return False
            if expire:
                self._expires[key] = time.monotonic() + expire
            else:
                self._expires.pop(key, None)
            return True

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)
            self._expires.pop(key, None)

    def _expire(self, key: str) -> None:
        until = self._expires.get(key)
        if until is not None and time.monotonic() >= until:
            self._data.pop(key, None)
            self._expires.pop(key, None)
