"""The composition root: builds long-lived services from settings at an entry point.

One root, in a few modules: this one opens the registry and identities with every
cross-cutting layer; :mod:`mlharbor.bootstrap.control` builds the control plane's services
(:func:`build_control_plane`: registry, identities, monitor, alert loop, policies, job store,
job runner with the real job kinds, trigger loop) for ``mlharbor server``, ``mlharbor worker``
and the demo; :mod:`mlharbor.bootstrap.jobs` builds the job kinds and the job notifications;
:mod:`mlharbor.bootstrap.serving` what a serving process serves (``mlharbor serve``).
Nothing heavy is imported until one of them is called.

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

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from mlharbor.bootstrap.control import ControlPlaneServices, build_control_plane
from mlharbor.bootstrap.serving import ServingProcess

if TYPE_CHECKING:
    from mlharbor.registry.service import Registry
    from mlharbor.security.identities import IdentityStore
    from mlharbor.settings import Settings


def open_registry(settings: Settings, *, migrate: bool = True) -> Registry:
    """The registry for ``settings`` with every configured cross-cutting layer applied."""
    from mlharbor.registry.artifacts.base import ArtifactStore
    from mlharbor.registry.service import Registry
    from mlharbor.security.encrypted_store import EncryptedArtifactStore, has_envelopes
    from mlharbor.security.envelope import wrapper_from_settings
    from mlharbor.security.signing import bundle_entries, policy_from_settings

    registry = Registry.from_settings(settings, migrate=migrate)
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
    if signer is not None:
        sign = signer
        registry.signer = lambda bundle: sign.tags_for(bundle_entries(bundle))
    if signatures is not None:
        policy = signatures
        # Checked inside the alias transaction, and again before any file is handed out.
        registry.alias_guard = policy.check_alias
        registry.load_guard = lambda mv: _check_loadable(policy, mv)
    return registry


def _check_loadable(policy: Any, mv: Any) -> None:
    for alias in mv.aliases:
        policy.check_alias(mv, alias)
    if policy.trusted and policy.is_signed(mv):
        policy.verify(mv)


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


__all__ = ["ControlPlaneServices", "ServingProcess", "build_control_plane", "open_identities",
           "open_registry"]
