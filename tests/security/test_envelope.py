"""Envelope encryption of artifacts: no plaintext at rest, per-artifact keys, rotation, KMS,
and failing closed without the right key."""

from __future__ import annotations

import os
import random
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy import select, update

from mlharbor.bootstrap import open_registry
from mlharbor.core.errors import ConfigError, IntegrityError, MlharborError
from mlharbor.security.envelope import new_master_key_text
from mlharbor.security.schema import artifact_envelopes
from mlharbor.settings import Settings
from tests.security import leakwatch
from tests.support import cli_env, run_cli

WINDOW = 64


def _key_file(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_text(leakwatch.remember_secret(new_master_key_text()) + "\n")
    path.chmod(0o600)
    return path


def _bundles(tmp: Path) -> dict[str, dict[str, bytes]]:
    rng = random.Random(7)
    text = b"".join(b"feature_%d,weight=%.6f;\n" % (i, rng.random()) for i in range(3000))
    big = rng.randbytes(300_000) * 5  # 1.5 MB: two segments
    return {
        "text-model": {"model.json": text, "meta/info.txt": b"churn model, trained on csv\n" * 40},
        "big-model": {"weights.bin": big},
        "empty-model": {"empty.bin": b"", "tiny.txt": b"x"},
    }


def _register(settings: Settings, tmp: Path) -> dict[str, dict[str, bytes]]:
    bundles = _bundles(tmp)
    registry = open_registry(settings)
    for name, files in bundles.items():
        folder = tmp / "bundles" / name
        for rel, data in files.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
        registry.register_version(name, folder)
    registry.close()
    return bundles


def _stored_blobs(settings: Settings) -> list[bytes]:
    root = Path(settings.artifact_uri_value)
    return [p.read_bytes() for p in root.rglob("*") if p.is_file()]


def _windows(data: bytes, stride: int) -> list[bytes]:
    return [data[i:i + WINDOW] for i in range(0, max(1, len(data) - WINDOW + 1), stride)]


def _assert_loads(settings: Settings, bundles: dict[str, dict[str, bytes]]) -> None:
    registry = open_registry(settings)
    try:
        for name, files in bundles.items():
            folder = registry.download(f"{name}:1")
            for rel, data in files.items():
                assert (folder / rel).read_bytes() == data
    finally:
        registry.close()


def _assert_nothing_loads(settings: Settings, bundles: dict[str, Any],
                          error: type[MlharborError]) -> str:
    registry = open_registry(settings)
    message = ""
    try:
        for name in bundles:
            with pytest.raises(error) as info:
                registry.download(f"{name}:1")
            message = str(info.value)
    finally:
        registry.close()
    return message


def test_encrypted_at_rest_with_fresh_keys_and_rotation(tmp_path: Path) -> None:
    key1 = _key_file(tmp_path, "k1")
    settings = Settings(home=tmp_path / "home", security={"master_key_file": key1})
    bundles = _register(settings, tmp_path)

    blobs = _stored_blobs(settings)
    assert len(blobs) == 5  # one ciphertext per distinct file
    # Every 64-byte window of the small files, a sample across the large one (every offset
    # of the stored bytes is looked up in the set).
    wanted = set()
    for files in bundles.values():
        for data in files.values():
            if len(data) >= WINDOW:
                wanted.update(_windows(data, 1 if len(data) < 100_000 else 997))
    assert len(wanted) > 50_000
    for blob in blobs:
        hits = [i for i in range(len(blob) - WINDOW + 1) if blob[i:i + WINDOW] in wanted]
        assert not hits, f"plaintext found in a stored blob at offsets {hits[:5]}"

    registry = open_registry(settings)
    with registry.store.db.engine.connect() as conn:
        rows = conn.execute(select(artifact_envelopes)).all()
    registry.close()
    assert len(rows) == 5
    assert len({r.wrapped_key for r in rows}) == 5
    assert len({r.nonce_prefix for r in rows}) == 5
    _assert_loads(settings, bundles)

    # Rotate to a new key with the CLI: only the wrapped keys change.
    key2 = _key_file(tmp_path, "k2")
    env = {**cli_env(settings), "MLHARBOR_SECURITY__MASTER_KEY_FILE": str(key1)}
    done = run_cli("keys", "rotate", "--to-key-file", str(key2), env=env)
    assert done.returncode == 0, done.stderr
    assert "Re-wrapped 5 data key(s)" in done.stdout
    assert _stored_blobs(settings) == blobs  # no ciphertext was touched
    rotated = Settings(home=tmp_path / "home", security={"master_key_file": key2})
    _assert_loads(rotated, bundles)

    # The old key, a random key and no key at all: nothing loads, each with a clear error.
    message = _assert_nothing_loads(settings, bundles, ConfigError)
    assert "wrapped by local:" in message and str(key1) not in message
    stranger = Settings(home=tmp_path / "home",
                        security={"master_key_file": _key_file(tmp_path, "k3")})
    _assert_nothing_loads(stranger, bundles, ConfigError)
    bare = Settings(home=tmp_path / "home")
    message = _assert_nothing_loads(bare, bundles, ConfigError)
    assert "no master key is configured" in message
    with pytest.raises(ConfigError):
        registry = open_registry(bare)
        try:
            registry.register_version("text-model", tmp_path / "bundles" / "big-model")
        finally:
            registry.close()


def test_a_wrong_key_claiming_the_right_id_still_fails(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home",
                        security={"master_key_file": _key_file(tmp_path, "k1")})
    bundles = _register(settings, tmp_path)
    other = Settings(home=tmp_path / "home",
                     security={"master_key_file": _key_file(tmp_path, "k2")})
    registry = open_registry(other)
    with registry.store.db.engine.begin() as conn:  # forge the key id of every row
        conn.execute(update(artifact_envelopes).values(kek_id=registry.artifacts.wrapper.kek_id))
    registry.close()
    _assert_nothing_loads(other, bundles, IntegrityError)


def test_tampered_ciphertext_is_refused(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home",
                        security={"master_key_file": _key_file(tmp_path, "k1")})
    bundles = {"text-model": _register(settings, tmp_path)["text-model"]}
    registry = open_registry(settings)
    mv = registry.get_version("text-model:1")
    with registry.store.db.engine.connect() as conn:
        cipher = conn.execute(select(artifact_envelopes.c.cipher_sha256).where(
            artifact_envelopes.c.plain_sha256 == mv.files[0].sha256)).scalar_one()
    registry.close()
    blob = next(Path(settings.artifact_uri_value).rglob(cipher))
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.chmod(0o600)
    blob.write_bytes(bytes(data))
    _assert_nothing_loads(settings, bundles, IntegrityError)


@pytest.fixture
def kms_key(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    import boto3

    for var, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(var, value)
    kms = boto3.client("kms", endpoint_url=moto_server, region_name="us-east-1")
    return str(kms.create_key(Description=f"mlharbor-{uuid.uuid4().hex[:8]}")["KeyMetadata"]
               ["KeyId"])


def test_kms_wraps_data_keys_and_rotation_from_a_local_key(
        tmp_path: Path, moto_server: str, kms_key: str) -> None:
    local = _key_file(tmp_path, "k1")
    settings = Settings(home=tmp_path / "home", security={"master_key_file": local})
    bundles = _register(settings, tmp_path)
    env = {**cli_env(settings), "MLHARBOR_SECURITY__MASTER_KEY_FILE": str(local),
           "MLHARBOR_SECURITY__KMS_ENDPOINT_URL": moto_server,
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    done = run_cli("keys", "rotate", "--to-kms-key-id", kms_key, env=env)
    assert done.returncode == 0, done.stderr
    via_kms = Settings(home=tmp_path / "home",
                       security={"kms_key_id": kms_key, "kms_endpoint_url": moto_server})
    _assert_loads(via_kms, bundles)
    registry = open_registry(via_kms)
    with registry.store.db.engine.connect() as conn:
        assert {r.kek_id for r in conn.execute(select(artifact_envelopes))} == {
            f"kms:{kms_key}"}
    # New artifacts are wrapped by KMS directly.
    extra = tmp_path / "extra.bin"
    extra.write_bytes(os.urandom(5000))
    mv = registry.register_version("kms-model", extra)
    assert (registry.download(mv) / "extra.bin").read_bytes() == extra.read_bytes()
    registry.close()
    _assert_nothing_loads(settings, bundles, ConfigError)  # the local key no longer opens


class _Clock:
    """An injectable monotonic clock the test moves forward (no sleeping)."""

    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def _kms_calls(client: Any) -> Counter[str]:
    """Counts the KMS API calls ``client`` makes, by operation (botocore's own event hook)."""
    calls: Counter[str] = Counter()

    def count(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    client.meta.events.register("before-call.kms", count)
    return calls


def _log_record(i: int) -> Any:
    from datetime import UTC, datetime

    from mlharbor.core.records import PredictionRecord

    return PredictionRecord(f"r{i}", "churn", "churn@champion", 1, {"tenure": i}, [i % 2],
                            0.001, datetime.now(UTC))


def test_log_data_keys_are_cached_with_a_bounded_lifetime_and_use_count(
        tmp_path: Path, moto_server: str, kms_key: str) -> None:
    from mlharbor.monitoring.predlog import PredictionLog
    from mlharbor.monitoring.segments import LocalSegments, Sealer
    from mlharbor.security.envelope import KmsMasterKey

    clock = _Clock()
    wrapper = KmsMasterKey.connect(kms_key, endpoint_url=moto_server, region="us-east-1")
    calls = _kms_calls(wrapper.client)
    sealer = Sealer(wrapper, max_age_s=300, max_uses=1_000, clock=clock)
    log = PredictionLog(tmp_path / "journal", LocalSegments(tmp_path / "segments"),
                        sealer=sealer)
    for i in range(200):  # 200 journal writes within one key lifetime
        log.emit(_log_record(i))
        assert log.flush() == 1
        clock.now += 1.0
    assert calls == {"GenerateDataKey": 1}  # not one KMS call per write
    first = sealer.keys.current()
    clock.now += 101.0  # 301 s after the key was made: it has expired
    log.emit(_log_record(200))
    log.flush()
    assert calls["GenerateDataKey"] == 2
    second = sealer.keys.current()
    assert second[1] != first[1] and second[0] != first[0]  # a new key, newly wrapped

    # Compaction reads 201 sealed frames and seals a segment: one Decrypt, for the first key
    # (it is past its lifetime, so no longer kept in memory); the current key is remembered
    # since this process made it, and seals the segment too.
    log.compact()
    assert calls == {"GenerateDataKey": 2, "Decrypt": 1}
    ids = log.scan("churn", columns=["request_id"])["request_id"].to_pylist()
    assert sorted(ids) == sorted(f"r{i}" for i in range(201))

    # Another process opens each distinct key once, however many blobs it seals.
    reader = Sealer(KmsMasterKey.connect(kms_key, endpoint_url=moto_server,
                                         region="us-east-1"), clock=clock)
    reads = _kms_calls(reader.wrapper.client)
    for name in log.segment_names("churn") * 3:
        assert reader.open(LocalSegments(tmp_path / "segments").get(name), name)
    assert reads == {"Decrypt": 1}

    # The use count bounds a key too: 25 blobs at 10 per key take 3 keys.
    counted = Sealer(wrapper, max_age_s=300, max_uses=10, clock=clock)
    before = calls["GenerateDataKey"]
    for i in range(25):
        counted.seal(b"frame", f"journal-{i}.log")
    assert calls["GenerateDataKey"] - before == 3

    # Plaintext keys never reach the disk: not in the journal, the segments or anywhere else.
    keys = [first[0], second[0]]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(key in data for key in keys), path
    with pytest.raises(TypeError, match="never pickled"):
        import pickle

        pickle.dumps(sealer.keys)
    log.close()


def test_the_data_key_lifetime_is_a_setting(tmp_path: Path) -> None:
    from mlharbor.monitoring.segments import sealer_from_settings

    key = new_master_key_text()
    default = sealer_from_settings(Settings(home=tmp_path, security={"master_key": key}))
    assert default is not None and default.keys.max_age_s == 300.0
    tuned = sealer_from_settings(Settings(home=tmp_path, security={
        "master_key": key, "data_key_max_age_s": 30, "data_key_max_uses": 500}))
    assert tuned is not None and (tuned.keys.max_age_s, tuned.keys.max_uses) == (30.0, 500)
    fresh = sealer_from_settings(Settings(home=tmp_path, security={
        "master_key": key, "data_key_max_age_s": 0}))
    assert fresh is not None
    blobs = [fresh.seal(b"x", "a") for _ in range(3)]
    headers = {b[12:12 + int.from_bytes(b[8:12], "big")] for b in blobs}
    assert len(headers) == 3  # 0 = a fresh key per blob
    with pytest.raises(ValidationError):
        Settings(home=tmp_path, security={"data_key_max_age_s": -1})
