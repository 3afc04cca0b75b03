"""Ed25519 signatures on versions: signed at registration, verified on load, required by
protected aliases."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlharbor.bootstrap import open_registry
from mlharbor.core.errors import ConflictError, IntegrityError, InvalidInputError
from mlharbor.security.signing import KEY_ID_TAG, SIGNATURE_TAG, generate_signing_key
from mlharbor.settings import Settings
from tests.support import cli_env, run_cli


def _bundle(folder: Path, content: bytes) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.bin").write_bytes(content)
    (folder / "conf").mkdir()
    (folder / "conf" / "params.json").write_text('{"depth": 3}')
    return folder


def test_sign_verify_and_protect_aliases(tmp_path: Path) -> None:
    private, public = generate_signing_key(tmp_path / "signer.pem")
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    _other_private, other_public = generate_signing_key(tmp_path / "other.pem")
    signing = Settings(home=tmp_path / "home", security={
        "signing_key_file": str(private), "require_signed_aliases": ["production"]})
    plain = Settings(home=tmp_path / "home", security={
        "trusted_signing_keys": [str(public)], "require_signed_aliases": ["production"]})

    registry = open_registry(signing)
    signed = registry.register_version("churn", _bundle(tmp_path / "b1", b"one"))
    assert signed.tags[SIGNATURE_TAG] and signed.tags[KEY_ID_TAG].startswith("ed25519:")
    registry.close()

    registry = open_registry(plain)  # cannot sign, but trusts the signer
    unsigned = registry.register_version("churn", _bundle(tmp_path / "b2", b"two"))
    assert SIGNATURE_TAG not in unsigned.tags
    with pytest.raises(ConflictError, match="only point at signed versions"):
        registry.set_alias("churn", "production", unsigned.version)
    registry.set_alias("churn", "staging", unsigned.version)  # unprotected alias: fine
    registry.set_alias("churn", "production", signed.version)
    assert (registry.download("churn@production") / "model.bin").read_bytes() == b"one"

    # A signature copied onto another version does not verify.
    with pytest.raises(InvalidInputError, match="reserved"):
        registry.update_version("churn:2", tags={SIGNATURE_TAG: "forged"})
    registry.record_signature("churn:2", {SIGNATURE_TAG: signed.tags[SIGNATURE_TAG],
                                          KEY_ID_TAG: signed.tags[KEY_ID_TAG]})
    with pytest.raises(IntegrityError, match="does not match its files"):
        registry.set_alias("churn", "production", 2)
    with pytest.raises(IntegrityError):
        registry.download("churn:2")  # signed-looking versions are verified on load
    registry.close()

    # Only trusted keys count.
    stranger = Settings(home=tmp_path / "home", security={
        "trusted_signing_keys": [str(other_public)], "require_signed_aliases": ["production"]})
    registry = open_registry(stranger)
    with pytest.raises(IntegrityError, match="not a trusted signing key"):
        registry.download("churn:1")
    registry.close()

    # The CLI signs an existing version and verifies it.
    env = {**cli_env(plain), "MLHARBOR_SECURITY__SIGNING_KEY_FILE": str(private)}
    done = run_cli("keys", "sign", "churn:2", env=env)
    assert done.returncode == 0, done.stderr
    checked = run_cli("keys", "verify", "churn:2", env=env)
    assert checked.returncode == 0 and "the signature matches" in checked.stdout
    registry = open_registry(plain)
    registry.set_alias("churn", "production", 2)
    registry.close()
