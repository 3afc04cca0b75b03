"""Blobs in S3 (or any S3 API): ``s3://bucket/prefix/sha256/ab/abcdef...``.

An S3 object appears whole or not at all; large files go up as multipart uploads, which become
visible only when the upload is completed. Reads stream to a temporary file, hash on the way and
are renamed into place only when the digest matches.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from mlharbor.core.errors import ConfigError, UnavailableError
from mlharbor.registry.artifacts.base import (
    BlobInfo,
    check_digest,
    copy_hashing,
    integrity_failure,
)

MULTIPART_THRESHOLD = 8 * 1024 * 1024


class S3ArtifactStore:
    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"

    @classmethod
    def from_uri(cls, uri: str, *, endpoint_url: str | None, region: str) -> S3ArtifactStore:
        rest = uri.removeprefix("s3://")
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise ConfigError(
                f"The artifact URI {uri!r} names no bucket.", hint="Use s3://bucket/prefix."
            )
        import boto3
        from botocore.config import Config

        client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}),
        )
        return cls(client, bucket, prefix)

    def _key(self, sha256: str) -> str:
        check_digest(sha256)
        key = f"sha256/{sha256[:2]}/{sha256}"
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, path: Path) -> BlobInfo:
        from boto3.s3.transfer import TransferConfig

        # Upload a private copy made while hashing, so the bytes stored are exactly the bytes
        # the digest was computed over, even if the source changes meanwhile.
        fd, tmp_name = tempfile.mkstemp(prefix="mlharbor-s3-put-")
        tmp = Path(tmp_name)
        try:
            with path.open("rb") as src, os.fdopen(fd, "wb") as dst:
                info = copy_hashing(src, dst)
            if self.exists(info.sha256):
                return info
            config = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD)
            try:
                self.client.upload_file(
                    str(tmp), self.bucket, self._key(info.sha256), Config=config,
                    ExtraArgs={"Metadata": {"sha256": info.sha256}},
                )
            except Exception as exc:
                raise UnavailableError(
                    f"Uploading to the artifact store {self.uri} failed: {exc}."
                ) from exc
            return info
        finally:
            tmp.unlink(missing_ok=True)

    def get_file(self, sha256: str, dest: Path, *, label: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        key = self._key(sha256)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise integrity_failure(label, sha256, "missing") from exc
            raise UnavailableError(
                f"Reading from the artifact store {self.uri} failed: {exc}."
            ) from exc
        except BotoCoreError as exc:
            raise UnavailableError(
                f"Reading from the artifact store {self.uri} failed: {exc}."
            ) from exc
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=".get-")
        tmp = Path(tmp_name)
        try:
            try:
                with os.fdopen(fd, "wb") as dst:
                    info = copy_hashing(body, dst)
            except (BotoCoreError, ClientError) as exc:
                raise UnavailableError(
                    f"Reading {label} from the artifact store {self.uri} failed: {exc}."
                ) from exc
            if info.sha256 != sha256:
                raise integrity_failure(label, sha256, info.sha256)
            os.replace(tmp, dest)
        finally:
            body.close()
            tmp.unlink(missing_ok=True)

    def exists(self, sha256: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(sha256))
        except BotoCoreError as exc:
            raise UnavailableError(f"The artifact store {self.uri} failed: {exc}.") from exc
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise UnavailableError(f"The artifact store {self.uri} failed: {exc}.") from exc
        return True

    def delete(self, sha256: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(sha256))
        except (BotoCoreError, ClientError) as exc:
            raise UnavailableError(f"Deleting from the artifact store {self.uri} failed: "
                                   f"{exc}.") from exc
