"""``s3://bucket/prefix``: artifacts in S3 through boto3 and its usual credential chain.

``BIDOPT_S3_ENDPOINT_URL`` points it at an S3-compatible endpoint (the tests use moto's server).
"""

from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

from bidopt.artifacts.base import ArtifactStore
from bidopt.errors import InvalidConfig, NotFound


class S3ArtifactStore(ArtifactStore):
    concurrent_puts = True  # boto3's client is thread-safe once made; its pool holds 32 connections

    def __init__(self, url: str, bucket: str, prefix: str) -> None:
        import boto3
        from botocore.config import Config

        self.url, self.bucket, self.prefix = url, bucket, prefix.strip("/")
        # Bounded calls: an endpoint that stops answering fails a bidder refresh or an optimizer
        # write within about a minute instead of boto3's default of several minutes of retries.
        self._s3 = boto3.client(
            "s3",
            endpoint_url=os.environ.get("BIDOPT_S3_ENDPOINT_URL") or None,
            config=Config(
                connect_timeout=5,
                read_timeout=20,
                retries={"mode": "standard", "max_attempts": 3},
                max_pool_connections=32,  # BIDOPT_EVENTS_WRITE_THREADS' most: a connection per thread
            ),
        )

    @classmethod
    def from_url(cls, url: str) -> S3ArtifactStore:
        parts = urlsplit(url)
        if not parts.netloc:
            raise InvalidConfig(f"S3 URL needs a bucket: s3://bucket/prefix, got {url}")
        return cls(url, parts.netloc, unquote(parts.path))

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

    def delete_many(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1,000 keys
            batch = [{"Key": self._key(key)} for key in keys[start : start + 1000]]
            answer = self._s3.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if answer.get("Errors"):
                errors = answer["Errors"]
                raise RuntimeError(f"S3 refused to delete {len(errors)} keys, e.g. {errors[0]}")

    def list_keys(self, prefix: str = "") -> list[str]:
        full = f"{self.prefix}/{prefix.lstrip('/')}" if self.prefix else prefix.lstrip("/")
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(keys)
