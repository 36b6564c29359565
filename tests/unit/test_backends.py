"""Warehouse, artifact store and cache are each chosen from one scheme -> backend table; an unknown
scheme is refused with the known ones, read from that table."""

import pytest

from bidopt.artifacts import ARTIFACT_STORES, LocalArtifactStore, open_artifact_store
from bidopt.cache import CACHES, InProcessCache, open_cache
from bidopt.errors import InvalidConfig
from bidopt.schemes import Backend, known_schemes
from bidopt.warehouse import WAREHOUSES, open_warehouse

KINDS = [
    ("warehouse", WAREHOUSES, open_warehouse),
    ("artifact", ARTIFACT_STORES, open_artifact_store),
    ("cache", CACHES, open_cache),
]


@pytest.mark.parametrize("kind,table,open_url", KINDS, ids=[k for k, _, _ in KINDS])
def test_an_unknown_scheme_lists_the_known_ones(kind, table, open_url):
    with pytest.raises(InvalidConfig) as raised:
        open_url("gopher://somewhere/x")
    message = str(raised.value)
    assert message.startswith(f"unknown {kind} URL scheme 'gopher': use ")
    assert all(backend.example in message for backend in table.values())


@pytest.mark.parametrize("kind,table,open_url", KINDS, ids=[k for k, _, _ in KINDS])
def test_a_row_added_to_the_table_is_a_backend(kind, table, open_url, monkeypatch):
    opened = []
    monkeypatch.setitem(table, "fake", Backend("fake://thing", lambda url: opened.append(url) or "backend"))
    assert open_url("fake://thing/1") == "backend" and opened == ["fake://thing/1"]
    with pytest.raises(InvalidConfig, match=r"use .*fake://thing"):
        open_url("gopher://x")


def test_the_messages_of_today():
    assert known_schemes(WAREHOUSES) == "duckdb:///folder or snowflake://..."
    assert known_schemes(ARTIFACT_STORES) == "file:///dir or s3://bucket/prefix"
    assert known_schemes(CACHES) == "memory:// or memcached://host:port"
    three = {s: Backend(f"{s}://", None) for s in ("a", "b", "c")}
    assert known_schemes(three) == "a://, b:// or c://"
    assert known_schemes({"a": Backend("a://", None)}) == "a://"


def test_each_scheme_opens_its_backend_and_checks_its_url(tmp_path):
    assert isinstance(open_artifact_store(f"file://{tmp_path}"), LocalArtifactStore)
    assert isinstance(open_cache("memory://"), InProcessCache)
    with open_warehouse(f"duckdb://{tmp_path}/wh") as wh:
        assert wh.url == f"duckdb://{tmp_path}/wh"
    with pytest.raises(InvalidConfig, match="S3 URL needs a bucket"):
        open_artifact_store("s3:///prefix")
    with pytest.raises(InvalidConfig, match="memcached URL needs a host"):
        open_cache("memcached://")
    with pytest.raises(InvalidConfig, match="duckdb warehouse URL needs a folder"):
        open_warehouse("duckdb://")
