"""The serving app's one key lookup: the key cache in front of the real identity store.

Under steady traffic an entry is re-checked in the background before it expires (stamped with
that check's time, never extended without one), so requests never queue for the database when
it expires; a revocation found by the re-check is refused within the TTL; misses of one key at
once share one query. The store is the real one (SQLite); the wrapper around it only counts
(and, for the single-flight check, slows) its lookups.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest

from mlharbor.core.errors import AuthenticationError
from mlharbor.security.identities import IdentityStore
from mlharbor.serving.auth import CachedIdentities
from mlharbor.settings import Settings
from tests.support import wait_until

ROW = {f"f{i}": 0.1 * i for i in range(20)}


class CountingStore(IdentityStore):
    """The real identity store, counting key lookups (optionally slowed down)."""

    def __init__(self, engine: Any, delay_s: float = 0.0) -> None:
        super().__init__(engine)
        self.lookups = 0
        self.delay_s = delay_s

    def authenticate_key(self, key: str) -> Any:
        self.lookups += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        return super().authenticate_key(key)


def admin_key(registry: Any) -> tuple[CountingStore, str, str]:
    store = CountingStore(registry.store.db.engine)
    key = store.init_admin("ops", actor="test")[1]
    return store, key, key.split("_")[1]


def test_a_hit_past_half_the_ttl_is_rechecked_in_the_background(registry: Any) -> None:
    store, key, _prefix = admin_key(registry)
    cache = CachedIdentities(store, ttl_s=2.0, max_stale_s=0.0)
    checked = time.monotonic()
    assert cache.authenticate_key(key).name == "ops"
    assert store.lookups == 1
    assert cache.cached(key).name == "ops"  # young: no re-check
    time.sleep(1.1)
    assert cache.cached(key).name == "ops"  # answered at once; the re-check runs behind
    wait_until(lambda: store.lookups == 2 and not cache._refreshing, 10,
               "the background re-check")
    time.sleep(max(0.0, checked + 2.1 - time.monotonic()))
    # Past the first check's TTL: the entry the re-check stamped answers, no query waits.
    assert cache.cached(key).name == "ops"
    assert store.lookups == 2


def test_a_revocation_found_by_the_recheck_is_refused_within_the_ttl(registry: Any) -> None:
    store, key, prefix = admin_key(registry)
    cache = CachedIdentities(store, ttl_s=0.6, max_stale_s=0.0)
    assert cache.authenticate_key(key).name == "ops"
    store.revoke_key(prefix, actor="test")
    time.sleep(0.35)
    assert cache.cached(key) is not None  # still within the TTL it was checked for
    wait_until(lambda: cache.cached(key) is None, 10, "the re-check to drop the entry")
    with pytest.raises(AuthenticationError, match="revoked"):
        cache.authenticate_key(key)


def test_concurrent_misses_of_one_key_make_one_query(registry: Any) -> None:
    store, key, _prefix = admin_key(registry)
    store.delay_s = 0.2  # a slow database: every miss overlaps the first one's query
    cache = CachedIdentities(store, ttl_s=30, max_stale_s=0.0)
    answers: list[str] = []
    threads = [threading.Thread(target=lambda: answers.append(cache.authenticate_key(key).name))
               for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == ["ops"] * 16
    assert store.lookups == 1


def test_unknown_keys_are_never_cached(registry: Any) -> None:
    store, key, _prefix = admin_key(registry)
    cache = CachedIdentities(store, ttl_s=30, max_stale_s=0.0)
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            cache.authenticate_key(key[:-2] + "xx")
    assert store.lookups == 3 and cache.cached(key[:-2] + "xx") is None


def test_the_serving_app_checks_a_key_once_for_many_requests(
        home_settings: Settings, registry: Any, serve: Any) -> None:
    store, key, _prefix = admin_key(registry)
    server = serve(ref="churn@champion", auth=True, identities=store)
    headers = {"Authorization": f"Bearer {key}"}
    url = f"{server.url}/v1/endpoints/churn/predict"

    async def burst() -> list[int]:
        async with httpx.AsyncClient(headers=headers, timeout=30) as client:
            answers = await asyncio.gather(*(client.post(url, json=ROW) for _ in range(40)))
        return [a.status_code for a in answers]

    assert httpx.post(url, json=ROW, headers=headers).status_code == 200  # cached now
    assert asyncio.run(burst()) == [200] * 40
    assert store.lookups == 1
    assert httpx.post(url, json=ROW, headers={"Authorization": "Bearer mlh_x"}).status_code \
        == 401
