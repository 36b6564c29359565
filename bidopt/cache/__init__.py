"""Bid caches, chosen by URL scheme in ``CACHES``: in-process (``memory://``, module ``memory``) or
memcached (``memcached://host:port``, module ``memcached``), both ``base.BidCache``s.

With ``memory://`` (the embedded default) every bidder replica holds every table in its own memory
and publishes every active run's bid table and domain multipliers here, namespaced by entity and run:

* ``bidopt:<entity>:<run_id>:bid:<segment key, URL-quoted>`` -> bid CPM as text
* ``bidopt:<entity>:<run_id>:dm:<domain, URL-quoted>`` -> multiplier as text
* ``bidopt:<entity>:<run_id>:meta`` -> JSON: features in key order, checksum, rows
* ``bidopt:<entity>:split`` -> JSON: the active split (split id, runs and percentages)

Keys longer than memcached's 250 bytes are replaced by ``bidopt:h:<sha1>``.

A cache with ``shared = True`` (memcached) is instead the bidder's second tier
(``bidopt.bidder.tiers``): each run version is published once, by one replica, under
``bidopt:<entity>:<run_id>.<hash>:{bid:<key>,pinned,pinned:<i>,published,claim}``, and replicas read it
through a near cache bounded in bytes; ``get_many`` fills it, ``add`` is the publishing claim (``touch`` renews it).
"""

from __future__ import annotations

from bidopt.cache.base import MAX_KEY, BidCache, cache_key
from bidopt.cache.memcached import MemcachedCache
from bidopt.cache.memory import InProcessCache
from bidopt.schemes import Backend, open_backend

__all__ = ["CACHES", "MAX_KEY", "BidCache", "InProcessCache", "MemcachedCache", "cache_key", "open_cache"]

CACHES: dict[str, Backend[BidCache]] = {
    "memory": Backend("memory://", InProcessCache.from_url),
    "memcached": Backend("memcached://host:port", MemcachedCache.from_url),
}


def open_cache(url: str) -> BidCache:
    return open_backend("cache", CACHES, url)
