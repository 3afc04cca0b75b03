"""``mlharbor keys``: master keys (generate, rotate) and signing keys (generate, sign, verify)."""

from __future__ import annotations

import os
from pathlib import Path

import typer


def _write_secret_file(path: Path, data: str) -> None:
    from mlharbor.core.errors import ConflictError

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ConflictError(f"{str(path)!r} already exists; refusing to overwrite a key.",
                            hint="Choose another file name.") from exc
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(data + "\n")


def register(app: typer.Typer) -> None:
    keys_app = typer.Typer(help="Encryption master keys and version signing keys.",
                           no_args_is_help=True)

    @keys_app.command("generate-master")
    def generate_master(out: Path = typer.Option(..., "--out", help="File to create (0600).")
                        ) -> None:
        """Write a new random 256-bit master key (base64) to a file readable only by you."""
        from mlharbor.security.envelope import LocalMasterKey, new_master_key_text

        text = new_master_key_text()
        _write_secret_file(out, text)
        key_id = LocalMasterKey.from_text(text, source=str(out)).kek_id
        typer.echo(f"Wrote master key {key_id} to {out}. Use it with "
                   f"MLHARBOR_SECURITY__MASTER_KEY_FILE={out}.")

    @keys_app.command("rotate")
    def rotate(
        ctx: typer.Context,
        to_key_file: Path = typer.Option(None, help="The new master key file."),
        to_kms_key_id: str = typer.Option(None, help="The new KMS key id or ARN."),
    ) -> None:
        """Re-wrap every artifact data key with a new master key (no data is re-encrypted).

        The current key comes from the settings; afterwards, point the settings at the new one.
        """
        from mlharbor.bootstrap import open_registry
        from mlharbor.cli.main import settings_from
        from mlharbor.core.errors import ConfigError
        from mlharbor.security import encrypted_store, envelope

        settings = settings_from(ctx)
        if (to_key_file is None) == (to_kms_key_id is None):
            raise ConfigError("Pass exactly one of --to-key-file and --to-kms-key-id.")
        old = envelope.wrapper_from_settings(settings)
        if old is None:
            raise ConfigError("No current master key is configured, so there is nothing to "
                              "rotate from.", hint="Set MLHARBOR_SECURITY__MASTER_KEY_FILE "
                              "(or MASTER_KEY, or KMS_KEY_ID) to the key in use.")
        new: envelope.KeyWrapper
        if to_key_file is not None:
            new = envelope.master_key_from_file(to_key_file)
            where = f"MLHARBOR_SECURITY__MASTER_KEY_FILE={to_key_file}"
        else:
            new = envelope.KmsMasterKey.connect(
                to_kms_key_id, endpoint_url=settings.security.kms_endpoint_url,
                region=settings.s3_region)
            where = f"MLHARBOR_SECURITY__KMS_KEY_ID={to_kms_key_id}"
        registry = open_registry(settings)
        count = encrypted_store.rotate(registry.store.db.engine, old, new)
        registry.store.record(actor=_actor(), action="keys.rotate", resource="artifacts",
                              outcome="success",
                              details={"from": old.kek_id, "to": new.kek_id, "count": count})
        typer.echo(f"Re-wrapped {count} data key(s) from {old.kek_id} to {new.kek_id}. "
                   f"Now set {where} (and drop the old key setting).")

    @keys_app.command("generate-signing")
    def generate_signing(out: Path = typer.Option(..., "--out", help="Private key file "
                                                  "(0600); the public key goes to OUT.pub.")
                         ) -> None:
        """Write a new Ed25519 signing key pair."""
        from mlharbor.security.signing import Signer, generate_signing_key

        private, public = generate_signing_key(out)
        typer.echo(f"Wrote {private} (private, signer {Signer.from_file(private).key_id}) and "
                   f"{public}. Sign with MLHARBOR_SECURITY__SIGNING_KEY_FILE={private}; trust "
                   f"with MLHARBOR_SECURITY__TRUSTED_SIGNING_KEYS='[\"{public}\"]'.")

    @keys_app.command("sign")
    def sign(ctx: typer.Context,
             reference: str = typer.Argument(..., help="name:VERSION or name@alias")) -> None:
        """Sign an existing version with the configured signing key."""
        from mlharbor.bootstrap import open_registry
        from mlharbor.cli.main import settings_from
        from mlharbor.core.errors import ConfigError
        from mlharbor.security.signing import Signer

        settings = settings_from(ctx)
        if settings.security.signing_key_file is None:
            raise ConfigError("No signing key is configured.",
                              hint="Set MLHARBOR_SECURITY__SIGNING_KEY_FILE.")
        signer = Signer.from_file(settings.security.signing_key_file)
        registry = open_registry(settings)
        mv = registry.get_version(reference)
        tags = signer.tags_for((f.path, f.sha256, f.size) for f in mv.files)
        registry.record_signature(mv.ref, tags, actor=_actor())
        typer.echo(f"Signed {mv.ref} with {signer.key_id}.")

    @keys_app.command("verify")
    def verify(ctx: typer.Context,
               reference: str = typer.Argument(..., help="name:VERSION or name@alias")) -> None:
        """Check a version's signature against the trusted keys (exit 5 when it fails)."""
        from mlharbor.bootstrap import open_registry
        from mlharbor.cli.main import settings_from
        from mlharbor.security.signing import policy_from_settings

        settings = settings_from(ctx)
        policy, _signer = policy_from_settings(settings.security)
        mv = open_registry(settings).get_version(reference)
        typer.echo(f"{mv.ref} is signed by {policy.verify(mv)}; the signature matches.")

    app.add_typer(keys_app, name="keys")


def _actor() -> str:
    from mlharbor.cli.admin import cli_actor

    return cli_actor()
