"""``memory://``: a cache in this process only (the embedded default)."""

from __future__ import annotations

import threading

from bidopt.cache.base import BidCache


class InProcessCache(BidCache):
    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._data: dict[str, str] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_url(cls, url: str) -> InProcessCache:
        return cls(url)

    def set_many(self, values: dict[str, str]) -> None:
        with self._lock:
            self._data.update(values)

    def get(self, key: str) -> str | None:
        return self._data.get(key)
