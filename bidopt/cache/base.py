"""The bid cache interface and its key layout (see the package docstring)."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from urllib.parse import quote

MAX_KEY = 250


def cache_key(*parts: str) -> str:
    key = "bidopt:" + ":".join(quote(p, safe="") for p in parts)
    return key if len(key) <= MAX_KEY else "bidopt:h:" + hashlib.sha1(key.encode()).hexdigest()


class BidCache(ABC):
    url: str
    # True for a cache every bidder replica shares (memcached): the bidder then reads its tables from it
    # through a bounded near cache (``bidopt.bidder.tiers``) instead of holding every table in memory
    shared: bool = False

    @abstractmethod
    def set_many(self, values: dict[str, str]) -> None: ...

    @abstractmethod
    def get(self, key: str) -> str | None: ...

    @abstractmethod
    def get_many(self, keys: list[str]) -> dict[str, str]:
        """The values of those ``keys`` that are present (absent keys are left out)."""

    @abstractmethod
    def add(self, key: str, value: str, expire: int = 0) -> bool:
        """Store ``value`` only if ``key`` is absent; True if this call stored it (a claim).
        ``expire``: seconds until the key goes away by itself (0: never)."""

    def delete(self, key: str) -> None:  # noqa: B027
        """Remove ``key`` (absent: nothing happens)."""

    def touch(self, key: str, expire: int) -> bool:
        """Give ``key`` a new expiry of ``expire`` seconds; False if it is absent."""
        return self.get(key) is not None

    def publish_run(
        self, entity_code: str, run_id: str, bids: dict[str, float], multipliers: dict[str, float], meta: dict
    ) -> None:
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
