"""Content-addressed artifact stores: local folder and S3 (moto's server on loopback)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mlharbor.core.errors import ConfigError, IntegrityError, InvalidInputError
from mlharbor.registry.artifacts.base import open_artifact_store
from mlharbor.registry.artifacts.local import LocalArtifactStore
from mlharbor.registry.service import Registry
from mlharbor.settings import Settings


@pytest.fixture(params=["local", "s3"])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "local":
        return Settings(home=tmp_path / "home")
    endpoint = request.getfixturevalue("moto_server")
    bucket = request.getfixturevalue("s3_bucket")
    return Settings(home=tmp_path / "home", artifact_uri=f"s3://{bucket}/registry",
                    s3_endpoint_url=endpoint)


def test_round_trip_is_content_addressed(store_settings: Settings, tmp_path: Path) -> None:
    store = open_artifact_store(store_settings.artifact_uri_value, store_settings)
    data = os.urandom(300_000)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    info = store.put_file(src)
    assert info.sha256 == hashlib.sha256(data).hexdigest() and info.size == len(data)
    assert store.exists(info.sha256)
    assert store.put_file(src) == info  # idempotent
    dest = tmp_path / "out" / "copy.bin"
    store.get_file(info.sha256, dest, label="test blob")
    assert dest.read_bytes() == data
    assert [p.name for p in dest.parent.iterdir()] == ["copy.bin"]  # no temp files left
    with pytest.raises(InvalidInputError):
        store.get_file("../../etc/passwd", dest, label="x")


def test_large_file_multipart_on_s3(moto_server: str, s3_bucket: str, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "h", artifact_uri=f"s3://{s3_bucket}",
                        s3_endpoint_url=moto_server)
    store = open_artifact_store(settings.artifact_uri_value, settings)
    data = os.urandom(9 * 1024 * 1024)  # above the multipart threshold
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    info = store.put_file(src)
    import boto3

    head = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1").head_object(
        Bucket=s3_bucket, Key=f"sha256/{info.sha256[:2]}/{info.sha256}")
    assert head["ETag"].strip('"').endswith("-2")  # completed as a 2-part multipart upload
    dest = tmp_path / "big-copy.bin"
    store.get_file(info.sha256, dest, label="big")
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == info.sha256


def _flip_one_byte_in_store(settings: Settings, sha256: str) -> None:
    uri = settings.artifact_uri_value
    if uri.startswith("s3://"):
        import boto3

        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url,
                              region_name="us-east-1")
        key = f"{prefix}/sha256/{sha256[:2]}/{sha256}"
        body = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
        body[len(body) // 2] ^= 0x01
        client.put_object(Bucket=bucket, Key=key, Body=bytes(body))
        return
    path = LocalArtifactStore(Path(uri))._path(sha256)
    body = bytearray(path.read_bytes())
    body[len(body) // 2] ^= 0x01
    path.write_bytes(bytes(body))


def test_flipped_byte_is_detected_naming_model_version_and_file(
    store_settings: Settings, tmp_path: Path
) -> None:
    registry = Registry.from_settings(store_settings)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.bin").write_bytes(os.urandom(4096))
    (bundle / "other.txt").write_text("fine")
    mv = registry.register_version("churn", bundle)
    target = next(f for f in mv.files if f.path == "model.bin")
    _flip_one_byte_in_store(store_settings, target.sha256)
    with pytest.raises(IntegrityError) as info:
        registry.download("churn:1")
    message = str(info.value)
    assert "'model.bin' of churn:1" in message and "corrupt" in message
    # The corrupt copy never lands where loaders look.
    assert not (store_settings.home / "cache" / "bundles" / "churn" / "1").exists()
    registry.close()


def test_cached_copy_is_reverified(settings: Settings, tmp_path: Path) -> None:
    registry = Registry.from_settings(settings)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.bin").write_bytes(b"original bytes")
    registry.register_version("churn", bundle)
    folder = registry.download("churn:1")
    (folder / "model.bin").write_bytes(b"tampered bytes")  # same size, other content
    again = registry.download("churn:1")
    assert (again / "model.bin").read_bytes() == b"original bytes"
    registry.close()


def test_unknown_scheme_lists_known_ones(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="Known schemes: file, s3"):
        open_artifact_store("gcs://bucket/x", settings)


def test_names_never_write_outside_the_artifact_root(settings: Settings, tmp_path: Path) -> None:
    from tests.core.test_names import BAD_NAMES

    registry = Registry.from_settings(settings)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.bin").write_bytes(b"x")
    before = {p for p in tmp_path.rglob("*")}
    for name in BAD_NAMES:
        with pytest.raises(InvalidInputError):
            registry.register_version(name, bundle)
        with pytest.raises(InvalidInputError):
            registry.create_model(name)
        with pytest.raises(InvalidInputError):
            registry.set_alias("churn", name or "x/y", 1)
    created = {p for p in tmp_path.rglob("*")} - before
    home = settings.home
    assert all(p.is_relative_to(home) for p in created), created
    assert registry.list_models().total == 0
    registry.close()
