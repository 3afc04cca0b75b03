"""The closed loop under faults, with real `mlharbor server` processes (issue 13, "Must show"):

- SIGKILL of the server while the retrain job trains, and while a canary step holds: a server
  restarted on the same home resumes the job (after the dead server's lease) to a promotion;
  the job registers one version; the weights at the kill were one whole step's routes (or the
  endpoint as it was), never something in between; the audit chain verifies; no job is left
  running under a dead owner.
- Two servers on one PostgreSQL (artifacts in one shared folder): one retrain runs on exactly
  one of them, each step's effect once; SIGKILL of that server (found by the job's lease
  owner, ``host:pid:nonce`` in GET /api/v1/jobs/{id}) and the other finishes the job.

States are polled with deadline loops (hang guards, never speed checks). The kill is
``os.killpg(SIGKILL)`` on the server's own process group, so nothing it started survives it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlharbor.settings import Settings
from tests.pipelines.loophome import (
    ENDPOINT,
    apply_policy,
    build_champion_home,
    copy_home,
    fast_policy,
)
from tests.support import VENV_BIN, cli_env, free_port, run_cli, wait_for_port

pytestmark = pytest.mark.slow

LEASE_S = "2"
TERMINAL = ("succeeded", "failed", "cancelled")
STEPS = ["snapshot", "train", "validate", "canary-50", "canary-100", "promote"]


def two_step_policy(hold: str = "3s") -> str:
    """The loop home's fast policy with two canary steps (50 % then 100 %), each held
    ``hold`` with no traffic needed, so a kill can land while the 50 % step holds."""
    return fast_policy(hold).replace("steps: [100]", "steps: [50, 100]")


@pytest.fixture(scope="module")
def base_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_champion_home(tmp_path_factory.mktemp("loop-faults"))


# -- processes --------------------------------------------------------------------------------

class Server:
    """One `mlharbor server` process in its own process group, with an admin key."""

    def __init__(self, env: dict[str, str], key: str) -> None:
        self.port = free_port()
        exe = shutil.which("mlharbor", path=str(VENV_BIN)) or "mlharbor"
        self.log = (Path(env["MLHARBOR_HOME"]) / f"server-{self.port}.log").open("w")
        self.proc = subprocess.Popen(
            [exe, "server", "--host", "127.0.0.1", "--port", str(self.port)],
            env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT, text=True,
            start_new_session=True)
        wait_for_port(self.port, timeout=90, proc=self.proc)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30,
                                 headers={"Authorization": f"Bearer {key}"})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def job(self, job_id: str) -> dict[str, Any]:
        answer = self.http.get(f"/api/v1/jobs/{job_id}")
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    def kill(self) -> None:
        """SIGKILL the server and everything in its process group: no handler runs."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.http.close()

    def stop(self) -> str:
        """SIGTERM (if still alive); the server's output."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.http.close()
        self.log.close()
        return Path(self.log.name).read_text()


def poll(read: Callable[[], dict[str, Any]], done: Callable[[dict[str, Any]], bool],
         what: str, deadline_s: float = 240.0) -> dict[str, Any]:
    """Read until ``done`` (a hang guard with a deadline, not a speed check)."""
    end = time.monotonic() + deadline_s
    while True:
        body = read()
        if done(body):
            return body
        if time.monotonic() > end:
            raise AssertionError(f"{what}: not seen before the deadline: {body}")
        time.sleep(0.1)


def step(body: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in body["steps"] if s["name"] == name)
    return found


def pid_of(owner: str | None) -> int:
    """The process id in a runner's owner id (``host:pid:nonce``, see default_owner)."""
    assert owner, "no lease owner"
    return int(owner.rsplit(":", 2)[1])


def admin_key(settings: Settings) -> str:
    from mlharbor.bootstrap import open_identities, open_registry

    registry = open_registry(settings)
    try:
        identities = open_identities(registry)
        identities.create_identity("ops", kind="user", grants=["admin"], actor="test")
        return str(identities.create_key("ops", actor="test")[1])
    finally:
        registry.close()


def server_env(settings: Settings) -> dict[str, str]:
    return {**cli_env(settings), "MLHARBOR_PIPELINES__JOB_POLL_S": "0.2",
            "MLHARBOR_PIPELINES__JOB_LEASE_S": LEASE_S, "MLHARBOR_TRAINING__N_JOBS": "1",
            "MLHARBOR_PIPELINES__TRIGGERS": "false"}


def prepared(settings: Settings) -> tuple[dict[str, str], str]:
    from mlharbor.bootstrap import open_registry

    registry = open_registry(settings)
    try:
        apply_policy(registry, two_step_policy())
    finally:
        registry.close()
    return server_env(settings), admin_key(settings)


def submit(server: Server) -> str:
    asked = server.http.post(f"/api/v1/endpoints/{ENDPOINT}/retrain",
                             json={"reason": "fault test"})
    assert asked.status_code == 202, asked.text
    return str(asked.json()["job"]["id"])


# -- what must hold after every fault ---------------------------------------------------------

def routes_now(settings: Settings) -> tuple[list[tuple[str, float]], list[str]]:
    from mlharbor.bootstrap import open_registry
    from mlharbor.registry.endpoints import EndpointService

    registry = open_registry(settings)
    try:
        spec = EndpointService(registry).get(ENDPOINT).spec
        return [(r.ref, float(r.weight)) for r in spec.routes], list(spec.fallback)
    finally:
        registry.close()


def assert_promoted_once(settings: Settings, job_id: str) -> None:
    """One version registered by the job, one champion move by it, the final routes, no job
    running, and the audit chain verifies."""
    from mlharbor.bootstrap import open_registry
    from mlharbor.pipelines.jobs import JobState, JobStore
    from mlharbor.pipelines.retrain import JOB_TAG
    from mlharbor.registry.endpoints import EndpointService

    registry = open_registry(settings)
    try:
        mine = registry.list_versions("churn", tags={JOB_TAG: job_id}).items
        assert [v.version for v in mine] == [2]
        assert sorted(v.version for v in registry.list_versions("churn").items) == [1, 2]
        assert registry.get_version("churn@champion").version == 2
        moves = [m for m in registry.alias_history("churn", "champion")
                 if m.actor == f"job:{job_id}"]
        assert [(m.from_version, m.to_version) for m in moves] == [(1, 2)]
        spec = EndpointService(registry).get(ENDPOINT).spec
        assert [(r.ref, r.weight) for r in spec.routes] == [("churn@champion", 100.0)]
        assert spec.fallback == []
        # Each weight move once: 50 %, 100 %, then all to the alias.
        moved = [h for h in EndpointService(registry).history(ENDPOINT)
                 if h.actor == f"job:{job_id}"]
        assert [[(r["ref"], r["weight"]) for r in h.spec["routes"]] for h in moved
                if h.spec] == [[("churn:1", 50.0), ("churn:2", 50.0)], [("churn:2", 100.0)],
                               [("churn@champion", 100.0)]]
        assert JobStore(registry.store).list_jobs(state=JobState.RUNNING) == []
        ended = [e.action for e in registry.store.iter_audit()
                 if e.resource == f"job:{job_id}" and e.action.startswith("job.")]
        assert ended.count("job.succeeded") == 1 and "job.failed" not in ended
    finally:
        registry.close()
    verified = run_cli("audit", "verify", env=cli_env(settings))
    assert verified.returncode == 0, verified.stdout + verified.stderr


# -- SIGKILL of the one server, restarted on the same home ------------------------------------

@pytest.mark.parametrize("during", ["train", "canary-50"])
def test_sigkill_of_the_server_resumes_the_job_after_restart_with_one_registration(
        base_home: Path, tmp_path: Path, during: str) -> None:
    settings = Settings(home=copy_home(base_home, tmp_path / "home"))
    env, key = prepared(settings)
    first = Server(env, key)
    try:
        job_id = submit(first)

        def caught(body: dict[str, Any]) -> bool:
            assert body["state"] not in TERMINAL, body
            held = step(body, during)
            # The canary is caught once its weight move committed (noted on the step).
            return held["state"] == "running" and (
                during == "train" or "revision" in (held["progress"] or {}))

        body = poll(lambda: first.job(job_id), caught, f"{during} running")
        first.kill()
    finally:
        first.stop()

    # The server is dead, its job still running under its (expired) lease.
    from mlharbor.bootstrap import open_registry
    from mlharbor.pipelines.jobs import JobStore

    registry = open_registry(settings)
    try:
        dead = JobStore(registry.store).get(job_id)
    finally:
        registry.close()
    assert dead.state.value == "running" and pid_of(dead.lease_owner) == first.pid
    assert [s.state.value for s in dead.steps][STEPS.index(during)] == "running"
    routes, fallback = routes_now(settings)
    if during == "train":  # nothing moved yet
        assert (routes, fallback) == ([("churn@champion", 100.0)], [])
    else:  # exactly the 50 % step's routes, the champion as the challenger's fallback
        assert (routes, fallback) == ([("churn:1", 50.0), ("churn:2", 50.0)], ["churn:1"])
    assert body["lease_owner"] == dead.lease_owner

    second = Server(env, key)
    try:
        done = poll(lambda: second.job(job_id), lambda b: b["state"] in TERMINAL,
                    "the resumed job's end")
    finally:
        output = second.stop()
    assert done["state"] == "succeeded", (done["error"], output)
    assert done["outcome"] == "promoted" and done["lease_owner"] is None
    resumed = step(done, during)
    assert resumed["attempts"] == 2 and pid_of(resumed["runner"]) == second.pid
    before = STEPS[:STEPS.index(during)]
    assert all(step(done, name)["attempts"] == 1 and pid_of(step(done, name)["runner"])
               == first.pid for name in before)  # finished steps were not run again
    assert_promoted_once(settings, job_id)
    assert "Traceback" not in output


# -- two servers on one PostgreSQL ------------------------------------------------------------

@pytest.fixture
def pg_homes(pg_url: str, tmp_path: Path) -> Iterator[tuple[Settings, Settings]]:
    """Two server homes on one PostgreSQL database and one artifact folder; churn:1 trained
    there (champion) behind the endpoint."""
    from mlharbor.bootstrap import open_registry
    from mlharbor.registry.endpoints import EndpointService
    from tests.pipelines.test_retrain import train_champion

    artifacts = str(tmp_path / "shared-artifacts")
    homes = tuple(Settings(home=tmp_path / name, database_url=pg_url, artifact_uri=artifacts,
                           training={"n_jobs": 1}) for name in ("server-a", "server-b"))
    train_champion(tmp_path / "data", homes[0])
    registry = open_registry(homes[0])
    try:
        EndpointService(registry).create(
            {"name": ENDPOINT, "routes": [{"ref": "churn@champion"}]}, actor="setup")
    finally:
        registry.close()
    yield homes[0], homes[1]


def test_two_servers_on_postgresql_run_a_job_once_and_the_survivor_finishes_it(
        pg_homes: tuple[Settings, Settings]) -> None:
    home_a, home_b = pg_homes
    env_a, key = prepared(home_a)
    env_b = server_env(home_b)
    servers = [Server(env_a, key), Server(env_b, key)]
    try:
        job_id = submit(servers[0])
        # Held in the 50 % canary step (its move committed): who runs it is the lease owner.
        body = poll(lambda: servers[1].job(job_id),
                    lambda b: step(b, "canary-50")["state"] == "running"
                    and "revision" in (step(b, "canary-50")["progress"] or {}),
                    "the canary holding")
        owner = pid_of(body["lease_owner"])
        assert owner in (servers[0].pid, servers[1].pid)
        running = next(s for s in servers if s.pid == owner)
        other = next(s for s in servers if s.pid != owner)
        # One server ran every step so far, each once; the other ran nothing.
        for name in STEPS[:3]:
            assert step(body, name)["state"] == "succeeded"
            assert step(body, name)["attempts"] == 1
            assert pid_of(step(body, name)["runner"]) == owner
        assert body["attempt"] == 1

        running.kill()
        done = poll(lambda: other.job(job_id), lambda b: b["state"] in TERMINAL,
                    "the survivor finishing the job")
        assert done["state"] == "succeeded", done["error"]
        assert done["outcome"] == "promoted" and done["attempt"] == 2
        assert [pid_of(step(done, name)["runner"]) for name in STEPS] == [owner] * 3 + [
            other.pid] * 3
        assert step(done, "canary-50")["attempts"] == 2
        assert all(step(done, name)["attempts"] == 1 for name in STEPS if name != "canary-50")
    finally:
        outputs = [server.stop() for server in servers]
    assert_promoted_once(home_a, job_id)
    assert "Traceback" not in outputs[0] + outputs[1]
