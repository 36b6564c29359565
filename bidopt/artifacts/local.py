"""``file:///dir``: artifacts in a local (or mounted) directory."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from bidopt.artifacts.base import ArtifactStore
from bidopt.errors import InvalidConfig, NotFound


class LocalArtifactStore(ArtifactStore):
    def __init__(self, url: str, root: Path) -> None:
        self.url, self.root = url, root

    @classmethod
    def from_url(cls, url: str) -> LocalArtifactStore:
        return cls(url, Path(unquote(urlsplit(url).path)))

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents:
            raise InvalidConfig(f"artifact key escapes the store: {key}")
        return path

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # a reader sees the whole file or none

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"no artifact {self.child_url(key)}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list_keys(self, prefix: str = "") -> list[str]:
        root = self.root.resolve()
        folder, _, start = prefix.rpartition("/")
        base = (root / folder).resolve() if folder else root
        if base != root and root not in base.parents:
            raise InvalidConfig(f"artifact prefix escapes the store: {prefix}")
        if not base.is_dir():
            return []
        keys = []
        for path in base.rglob("*"):
            # put_bytes writes ".<name>.tmp" then renames: a file being written is not a key yet
            if path.is_file() and not path.name.startswith("."):
                key = path.relative_to(root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)
