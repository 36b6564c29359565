"""The artifact store interface: bytes under keys below one root URL."""

from __future__ import annotations

from abc import ABC, abstractmethod


class ArtifactStore(ABC):
    """Bytes under keys (``a/b/c.csv``) below one root URL."""

    url: str
    # Whether writing several keys at once goes faster than one after another: a store across a
    # network, whose puts wait on it, not on this process (benchmarks/event_writer.py: 6x with 8
    # threads on moto's S3 with 20 ms added to each put; 0.73x on the local folder, whose writes
    # are this process's CPU)
    concurrent_puts: bool = False

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """Raises ``NotFound`` for a missing key."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` if present."""

    def delete_many(self, keys: list[str]) -> None:
        """Remove each of ``keys`` that is present (stores that can, in one call)."""
        for key in keys:
            self.delete(key)

    @abstractmethod
    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key that starts with ``prefix`` (a folder such as ``a/b/`` or any start of a key),
        sorted; keys being written (temporary files) are not listed."""

    def child_url(self, key: str) -> str:
        return self.url.rstrip("/") + "/" + key.strip("/")
