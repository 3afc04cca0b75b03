"""The composition root: builds long-lived services from settings at an entry point.

The CLI, the control-plane API, the serving app and the dashboard all open the registry through
:func:`open_registry`, so cross-cutting layers (envelope encryption of artifacts, the signature
policy on aliases) are wired in one place, and the registry itself never imports security.

What gets wired, from ``settings.security``:

* a master key (``master_key``/``master_key_file``) or ``kms_key_id``: artifacts are
  envelope-encrypted (:class:`mlharbor.security.encrypted_store.EncryptedArtifactStore`);
  when none is configured but the database holds encrypted artifacts, every read and write of
  them fails closed with a clear error. Decrypted copies are then cached in a private
  temporary folder of the process, not under the home;
* ``signing_key_file``: versions are signed at registration (tags ``signature.*``);
* ``trusted_signing_keys`` / ``require_signed_aliases``: signatures are verified on load and
  protected aliases refuse unsigned versions.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from mlharbor.registry.service import Registry
    from mlharbor.security.identities import IdentityStore
    from mlharbor.settings import Settings


def open_registry(settings: Settings, *, migrate: bool = True) -> Registry:
    """The registry for ``settings`` with every configured cross-cutting layer applied."""
    from mlharbor.registry.artifacts.base import ArtifactStore
    from mlharbor.security.encrypted_store import EncryptedArtifactStore, has_envelopes
    from mlharbor.security.envelope import wrapper_from_settings
    from mlharbor.security.signing import policy_from_settings

    registry = _secured_registry_class().from_settings(settings, migrate=migrate)
    try:
        wrapper = wrapper_from_settings(settings)
        engine = registry.store.db.engine
        if wrapper is not None or _safe_has_envelopes(has_envelopes, engine):
            registry.artifacts = cast(
                ArtifactStore, EncryptedArtifactStore(registry.artifacts, engine, wrapper))
            # Decrypted copies must not outlive this process on disk next to the settings.
            registry.cache_dir = _private_cache_dir()
        signatures, signer = policy_from_settings(settings.security)
    except BaseException:
        registry.close()
        raise
    registry.signatures = signatures  # type: ignore[attr-defined]
    registry.signer = signer  # type: ignore[attr-defined]
    return registry


def open_identities(registry: Registry) -> IdentityStore:
    """Users, service accounts and API keys, in the registry's database, audited there."""
    from mlharbor.security.identities import IdentityStore

    return IdentityStore(registry.store.db.engine, audit=registry.store.record)


def _private_cache_dir() -> Path:
    import atexit
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="mlharbor-decrypted-"))  # mode 0700
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _safe_has_envelopes(check: Any, engine: Any) -> bool:
    from sqlalchemy.exc import SQLAlchemyError

    try:
        return bool(check(engine))
    except SQLAlchemyError:  # an old schema (opened with migrate=False) has no envelopes
        return False


@functools.cache
def _secured_registry_class() -> type[Registry]:
    """Registry plus signing at registration and signature checks on aliases and loads.

    Built on first use so that importing this module stays cheap.
    """
    from mlharbor.core.refs import ModelRef
    from mlharbor.registry.service import Registry
    from mlharbor.security.signing import SignaturePolicy, Signer, bundle_entries

    class SecuredRegistry(Registry):
        signatures: SignaturePolicy | None = None
        signer: Signer | None = None

        def register_version(self, name: str, bundle_dir: Path | str, *,
                             tags: dict[str, str] | None = None, **kwargs: Any) -> Any:
            if self.signer is not None:
                signed = self.signer.tags_for(bundle_entries(Path(bundle_dir)))
                tags = {**(tags or {}), **signed}
            return super().register_version(name, bundle_dir, tags=tags, **kwargs)

        def set_alias(self, name: str, alias: str, version: int, **kwargs: Any) -> Any:
            policy = self.signatures
            if policy is not None and alias in policy.require_for and isinstance(version, int):
                policy.check_alias(self.get_version(ModelRef(name, "version", version=version)),
                                   alias)
            return super().set_alias(name, alias, version, **kwargs)

        def download(self, ref: Any) -> Path:
            from mlharbor.core.records import ModelVersion

            mv = ref if isinstance(ref, ModelVersion) else self.get_version(ref)
            policy = self.signatures
            if policy is not None:
                for alias in mv.aliases:
                    policy.check_alias(mv, alias)
                if policy.trusted and policy.is_signed(mv):
                    policy.verify(mv)
            return super().download(mv)

    return SecuredRegistry
