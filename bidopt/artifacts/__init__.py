"""Artifact stores, chosen by URL scheme in ``ARTIFACT_STORES``: a local directory (``file://``,
module ``local``) or S3 (``s3://``, module ``s3``), both ``base.ArtifactStore``s.

Each attempt at a run writes its own folder, ``<entity base path>/runs/<run_id>/attempt-<n>/``,
and the attempt that completes the run records that folder in ``opt_runs.s3_output_path``;
readers always go through that column (runs completed before attempt folders existed have
their files directly under ``runs/<run_id>/``). So a late worker whose attempt lost the run
writes and removes only files nobody reads. The entity's ``base_path`` is either an
absolute URL (``s3://bucket/x``, ``file:///x``) or a path relative to
``BIDOPT_ARTIFACT_URL``. Writers put ``manifest.json`` (with the SHA-256 of every other
file) last, so a folder whose manifest is missing is incomplete, whatever else is there;
readers check the checksums.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from bidopt.artifacts.base import ArtifactStore
from bidopt.artifacts.local import LocalArtifactStore
from bidopt.artifacts.s3 import S3ArtifactStore
from bidopt.errors import InvalidConfig, NotFound
from bidopt.schemes import Backend, open_backend

__all__ = [
    "ARTIFACT_STORES",
    "MANIFEST",
    "ArtifactStore",
    "LocalArtifactStore",
    "S3ArtifactStore",
    "attempt_output_url",
    "open_artifact_store",
    "read_run_artifact",
    "read_run_artifacts",
    "remove_run_artifacts",
    "run_output_url",
    "sha256",
    "write_run_artifacts",
]

MANIFEST = "manifest.json"

ARTIFACT_STORES: dict[str, Backend[ArtifactStore]] = {
    "file": Backend("file:///dir", LocalArtifactStore.from_url),
    "s3": Backend("s3://bucket/prefix", S3ArtifactStore.from_url),
}


def open_artifact_store(url: str) -> ArtifactStore:
    return open_backend("artifact", ARTIFACT_STORES, url)


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


def write_run_artifacts(
    output_url: str, files: dict[str, bytes], *, meta: dict, before_manifest: Callable[[], None] | None = None
) -> dict:
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
