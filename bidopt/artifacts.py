"""Artifact stores, chosen by URL scheme: a local directory (``file://``) or S3 (``s3://``).

Each attempt at a run writes its own folder, ``<entity base path>/runs/<run_id>/attempt-<n>/``,
and the attempt that completes the run records that folder in ``opt_runs.s3_output_path``;
readers always go through that column (runs completed before attempt folders existed have
their files directly under ``runs/<run_id>/``). So a late worker whose attempt lost the run
writes and removes only files nobody reads. The entity's ``base_path`` is either an
absolute URL (``s3://bucket/x``, ``file:///x``) or a path relative to
``BIDOPT_ARTIFACT_URL``. Writers put ``manifest.json`` (with the SHA-256 of every other
file) last, so a folder whose manifest is missing is incomplete, whatever else is there;
readers check the checksums.

S3 goes through boto3 with its usual credential chain; ``BIDOPT_S3_ENDPOINT_URL``
points it at an S3-compatible endpoint (the tests use moto's server).
"""

from __future__ import annotations

import hashlib
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from bidopt.errors import InvalidConfig, NotFound

MANIFEST = "manifest.json"


class ArtifactStore(ABC):
    """Bytes under keys (``a/b/c.csv``) below one root URL."""

    url: str

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

    def child_url(self, key: str) -> str:
        return self.url.rstrip("/") + "/" + key.strip("/")


class LocalArtifactStore(ArtifactStore):
    def __init__(self, url: str, root: Path) -> None:
        self.url, self.root = url, root

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


class S3ArtifactStore(ArtifactStore):
    def __init__(self, url: str, bucket: str, prefix: str) -> None:
        import boto3

        from botocore.config import Config

        self.url, self.bucket, self.prefix = url, bucket, prefix.strip("/")
        # Bounded calls: an endpoint that stops answering fails a bidder refresh or an optimizer
        # write within about a minute instead of boto3's default of several minutes of retries.
        self._s3 = boto3.client("s3", endpoint_url=os.environ.get("BIDOPT_S3_ENDPOINT_URL") or None,
                                config=Config(connect_timeout=5, read_timeout=20,
                                              retries={"mode": "standard", "max_attempts": 3}))

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key.strip('/')}" if self.prefix else key.strip("/")

    def put_bytes(self, key: str, data: bytes) -> None:
        self._s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self._s3.exceptions.NoSuchKey:
            raise NotFound(f"no artifact {self.child_url(key)}") from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self._s3.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def delete(self, key: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=self._key(key))


def open_artifact_store(url: str) -> ArtifactStore:
    parts = urlsplit(url)
    if parts.scheme == "file":
        return LocalArtifactStore(url, Path(unquote(parts.path)))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise InvalidConfig(f"S3 URL needs a bucket: s3://bucket/prefix, got {url}")
        return S3ArtifactStore(url, parts.netloc, unquote(parts.path))
    raise InvalidConfig(f"unknown artifact URL scheme {parts.scheme!r}: use file:///dir or s3://bucket/prefix")


def run_output_url(artifact_url: str, base_path: str, run_id: str) -> str:
    """Where a run's artifacts go: ``<base>/runs/<run_id>``, ``base`` absolute or below ``artifact_url``."""
    base = base_path if urlsplit(base_path).scheme else artifact_url.rstrip("/") + "/" + base_path.strip("/")
    return f"{base.rstrip('/')}/runs/{run_id}"


def attempt_output_url(run_url: str, attempt: int) -> str:
    """Where attempt ``attempt`` (``opt_runs.attempts`` when it was claimed) of the run whose folder
    is ``run_url`` (``run_output_url``) writes: ``<run folder>/attempt-<n>``. One folder per claim,
    so no two workers ever write or remove the same files."""
    if attempt < 1:
        raise InvalidConfig(f"attempt numbers start at 1, got {attempt}")
    return f"{run_url.rstrip('/')}/attempt-{attempt}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_run_artifacts(output_url: str, files: dict[str, bytes], *, meta: dict,
                        before_manifest: Callable[[], None] | None = None) -> dict:
    """Write ``files`` then a manifest of their sizes and checksums; returns the manifest.

    ``before_manifest`` runs between the two; if it raises, no manifest is written (the
    optimizer checks there that it still holds the run)."""
    store = open_artifact_store(output_url)
    for name, data in files.items():
        store.put_bytes(name, data)
    manifest = {**meta, "files": {n: {"sha256": sha256(d), "bytes": len(d)} for n, d in files.items()}}
    if before_manifest is not None:
        before_manifest()
    store.put_bytes(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return manifest


def remove_run_artifacts(output_url: str, names: Iterable[str]) -> None:
    """Delete the manifest, then ``names``, from ``output_url`` (missing ones are skipped).

    The manifest goes first so that a reader never sees a manifest whose files are gone.
    Callers pass only a folder and names they wrote themselves."""
    store = open_artifact_store(output_url)
    store.delete(MANIFEST)
    for name in names:
        if name != MANIFEST:
            store.delete(name)


def read_run_artifacts(output_url: str, names: list[str]) -> tuple[dict, dict[str, bytes]]:
    """``(manifest, {name: bytes})`` of a completed run: the manifest is read once and every file
    is checked against it (``NotFound`` when missing, ``InvalidConfig`` on a checksum mismatch)."""
    store = open_artifact_store(output_url)
    manifest = json.loads(store.get_bytes(MANIFEST))
    files = {}
    for name in names:
        entry = manifest["files"].get(name)
        if entry is None:
            raise NotFound(f"{name} is not in the manifest of {output_url}")
        data = store.get_bytes(name)
        if sha256(data) != entry["sha256"]:
            raise InvalidConfig(f"{output_url}/{name} does not match its manifest checksum")
        files[name] = data
    return manifest, files


def read_run_artifact(output_url: str, name: str) -> bytes:
    """One file of a completed run, checked against its manifest."""
    return read_run_artifacts(output_url, [name])[1][name]
