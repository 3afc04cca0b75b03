"""``mlharbor serve --workers N --tls-cert --tls-key`` as users run it on their own hosts: real
processes, HTTPS verified against a CA made here, SIGTERM to the parent, the prediction log."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serving.conftest import FEATURES
from tests.support import VENV_BIN, cli_env, free_port, run_cli

ROW = [{f: 0.1 * i for i, f in enumerate(FEATURES)}]


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    other_key: Path  # a valid key of another pair


def _write_key(path: Path, key: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def make_pki(folder: Path) -> Pki:
    """A CA and a server certificate for 127.0.0.1 signed by it (ECDSA P-256, one day)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mlharbor test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                       False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pki = Pki(folder / "ca.pem", folder / "server.pem", folder / "server.key",
              folder / "other.key")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    _write_key(pki.key, key)
    _write_key(pki.other_key, ec.generate_private_key(ec.SECP256R1()))
    return pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def admin_key(registry: Any) -> str:
    from mlharbor.bootstrap import open_identities

    return open_identities(registry).init_admin("ops", actor="test")[1]


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc: no psutil needed)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after the last ")".
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def _descendants(pid: int) -> list[int]:
    found = []
    for child in _children(pid):
        found += [child, *_descendants(child)]
    return found


def _workers(pid: int) -> list[int]:
    """The worker processes of the server ``pid`` (multiprocessing also starts a resource
    tracker next to them)."""
    return [child for child in _children(pid)
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _slot_holders(journal_root: Path) -> dict[str, int]:
    """Journal slot -> pid of the process holding its flock (from /proc/locks)."""
    inodes = {(slot / ".lock").stat().st_ino: slot.name
              for slot in journal_root.glob("slot-*") if (slot / ".lock").exists()}
    holders = {}
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if len(parts) > 5 and parts[1] == "FLOCK":
            inode = int(parts[5].rsplit(":", 1)[1])
            if inode in inodes:
                holders[inodes[inode]] = int(parts[4])
    return holders


def _journal_entries(slot: Path) -> int:
    """Records journaled in a slot (a binary frame's block holds several)."""
    from mlharbor.monitoring.journal import Journal

    journal = Journal(slot, max_bytes=1 << 30)
    return sum(len(item["block"]["id"]) if "block" in item else 1
               for path in sorted(slot.glob("journal-*.log")) for item in journal.read(path))


def _read_response(sock: ssl.SSLSocket) -> tuple[bytes, bytes]:
    """The head and body of one HTTP/1.1 response with a content-length."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        body += sock.recv(65536)
    return head, body


class Workers:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, verify: ssl.SSLContext,
                 key: str) -> None:
        self.proc, self.url, self.verify = proc, url, verify
        self.headers = {"Authorization": f"Bearer {key}"}


@pytest.fixture
def start_workers(home_settings: Any, admin_key: str) -> Iterator[Any]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str] | None = None, ca: Path) -> Workers:
        port = free_port()
        full_env = {**os.environ, **cli_env(home_settings),
                    "MLHARBOR_SECURITY__RATE_LIMIT_PER_MINUTE": "0",
                    # Journals stay in their slots until shutdown, so the test sees which
                    # worker logged what; shutdown turns them into segments.
                    "MLHARBOR_MONITORING__SEGMENT_INTERVAL_S": "3600", **(env or {})}
        proc = subprocess.Popen([str(VENV_BIN / "mlharbor"), "serve", *args, "--port",
                                 str(port)], env=full_env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        procs.append(proc)
        verify = ssl.create_default_context(cafile=str(ca))
        url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if httpx.get(f"{url}/readyz", verify=verify, timeout=2).status_code == 200:
                    return Workers(proc, url, verify, admin_key)
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("mlharbor serve --workers did not become ready")

    yield start
    for proc in procs:
        if proc.poll() is None:
            for child in _children(proc.pid):
                os.kill(child, signal.SIGKILL)
            proc.kill()
            proc.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_tls_workers_share_the_port_log_everything_and_stop_on_sigterm(
        start_workers: Any, home_settings: Any, pki: Pki) -> None:
    served = start_workers("churn@champion", "--workers", "2", "--tls-cert", str(pki.cert),
                           "--tls-key", str(pki.key), ca=pki.ca)
    workers = _workers(served.proc.pid)
    assert len(workers) == 2, _children(served.proc.pid)
    # HTTPS only, and only with a certificate the client trusts.
    with pytest.raises(httpx.HTTPError):
        httpx.get(served.url.replace("https", "http") + "/livez", timeout=2)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{served.url}/livez", timeout=2)

    journals = home_settings.home / "monitoring" / "journal"
    answered: list[str] = []
    lock = threading.Lock()

    def send(n: int) -> None:
        # A new connection per request: the kernel hands each to whichever worker accepts.
        for _ in range(n):
            response = httpx.post(f"{served.url}/v1/endpoints/churn/predict", json=ROW,
                                  headers=served.headers, verify=served.verify, timeout=30)
            assert response.status_code == 200, response.text
            with lock:
                answered.append(response.json()["request_id"])

    deadline = time.monotonic() + 60
    while True:
        threads = [threading.Thread(target=send, args=(15,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(1.5)  # records reach the journal within flush_interval_s (1 s)
        per_slot = {slot.name: _journal_entries(slot) for slot in journals.glob("slot-*")}
        if sum(1 for n in per_slot.values() if n) >= 2 or time.monotonic() > deadline:
            break
    holders = _slot_holders(journals)
    # Two worker processes, each holding its own journal slot, both answered requests.
    assert sorted(holders.values()) == workers, (holders, workers)
    assert all(per_slot[slot] > 0 for slot in holders), per_slot
    assert sum(per_slot.values()) == len(answered)

    everyone = _descendants(served.proc.pid)  # workers and whatever they started
    # SIGTERM to the parent with a request in flight: its worker finishes it, then all stop.
    body = json.dumps(ROW * 200).encode()
    port = int(served.url.rsplit(":", 1)[1])
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    with served.verify.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        sock.sendall(b"POST /v1/endpoints/churn/predict HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                     b"authorization: " + served.headers["Authorization"].encode() + b"\r\n"
                     b"content-type: application/json\r\n"
                     b"content-length: " + str(len(body)).encode() + b"\r\n\r\n"
                     + body[:1000])
        time.sleep(0.3)
        served.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert served.proc.poll() is None, "the server quit with a request in flight"
        sock.sendall(body[1000:])
        head, answer = _read_response(sock)
    assert head.startswith(b"HTTP/1.1 200"), head
    answered.append(json.loads(answer)["request_id"])
    assert served.proc.wait(60) == 0
    assert not [pid for pid in workers if _alive(pid)]  # the parent waited for its workers
    deadline = time.monotonic() + 10  # helpers (multiprocessing's tracker ...) follow at once
    while [pid for pid in everyone if _alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in everyone if _alive(pid)]
    stderr = served.proc.stderr.read().decode() if served.proc.stderr else ""
    assert "Traceback" not in stderr, stderr[-3000:]

    from mlharbor.monitoring.service import open_prediction_log

    assert _slot_holders(journals) == {}  # every worker let go of its slot ...
    assert all(_journal_entries(slot) == 0 for slot in journals.glob("slot-*"))
    log = open_prediction_log(home_settings)
    try:
        logged = log.scan("churn").column("request_id").to_pylist()  # ... after compacting
    finally:
        log.close()
    # One row per predicted row: the request in flight at SIGTERM had 200.
    assert len(logged) == len(answered) - 1 + 200
    assert sorted(set(logged)) == sorted(answered)


def _native_ok(text: str) -> float:
    """``mlharbor_requests_total`` of native predictions answered 200 on endpoint churn."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "mlharbor_requests_total" and sample.labels == {
                    "protocol": "native", "endpoint": "churn", "code": "200"}:
                return sample.value
    return 0.0


def _gauge(text: str, name: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    return None


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_metrics_add_up_every_worker_whichever_answers_the_scrape(
        start_workers: Any, home_settings: Any, pki: Pki) -> None:
    import tempfile

    folders = Path(tempfile.gettempdir())
    before = set(folders.glob("mlharbor-metrics-*"))
    served = start_workers("churn@champion", "--workers", "2", "--tls-cert", str(pki.cert),
                           "--tls-key", str(pki.key), ca=pki.ca)
    journals = home_settings.home / "monitoring" / "journal"
    sent = 0
    deadline = time.monotonic() + 60
    while True:  # until both workers have answered predictions (their journals say so)
        for _ in range(20):  # a new connection each: the kernel spreads them over workers
            response = httpx.post(f"{served.url}/v1/endpoints/churn/predict", json=ROW,
                                  headers=served.headers, verify=served.verify, timeout=30)
            assert response.status_code == 200, response.text
            sent += 1
        time.sleep(1.5)  # journals flush within 1 s; metric snapshots within 0.5 s
        per_slot = [_journal_entries(slot) for slot in journals.glob("slot-*")]
        if sum(1 for n in per_slot if n) >= 2 or time.monotonic() > deadline:
            break
    assert sum(1 for n in per_slot if n) >= 2, per_slot  # neither worker alone saw `sent`
    assert sum(per_slot) == sent
    texts = [httpx.get(f"{served.url}/metrics", headers=served.headers, verify=served.verify,
                       timeout=10).text for _ in range(8)]
    for text in texts:
        assert _native_ok(text) == sent
        assert _gauge(text, "mlharbor_workers") == 2
        assert _gauge(text, "mlharbor_endpoint_ready") == 1  # every worker ready
    # The parent made one folder for this server, where each worker keeps its snapshot, and
    # removes it when it stops.
    (shared,) = set(folders.glob("mlharbor-metrics-*")) - before
    assert sorted(int(p.stem) for p in shared.glob("*.json")) == _workers(served.proc.pid)
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(60) == 0
    assert not shared.exists()
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (scripts/system-deps.sh installs prometheus)")
    lint = subprocess.run([promtool, "check", "metrics"], input=texts[0], capture_output=True,
                          text=True, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr


@pytest.mark.slow
def test_one_process_serves_https_from_settings(start_workers: Any, pki: Pki) -> None:
    served = start_workers("churn@champion", ca=pki.ca, env={
        "MLHARBOR_SERVER__TLS_CERTFILE": str(pki.cert),
        "MLHARBOR_SERVER__TLS_KEYFILE": str(pki.key)})
    assert _workers(served.proc.pid) == []  # no worker processes: this one serves
    answer = httpx.post(f"{served.url}/v2/models/churn/infer", headers=served.headers,
                        verify=served.verify, json={"inputs": [
                            {"name": f, "shape": [1], "datatype": "FP64", "data": [v]}
                            for f, v in ROW[0].items()]})
    assert answer.status_code == 200, answer.text
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(30) == 0


def _bad_combinations(pki: Pki, tmp: Path) -> list[tuple[list[str], dict[str, str], str]]:
    return [
        (["--tls-cert", str(pki.cert)], {},
         "a certificate was given without its private key: --tls-key"),
        (["--tls-key", str(pki.key)], {},
         "a private key was given without its certificate: --tls-cert"),
        ([], {"MLHARBOR_SERVER__TLS_CERTFILE": str(pki.cert)},
         "a certificate was given without its private key: --tls-key"),
        (["--workers", "0"], {}, "--workers must be 1 or more; received 0"),
        (["--tls-cert", str(tmp / "missing.pem"), "--tls-key", str(pki.key)], {},
         "Cannot read the --tls-cert file"),
        (["--tls-cert", str(pki.cert), "--tls-key", str(tmp)], {},
         "Cannot read the --tls-key file"),
        (["--tls-cert", str(pki.cert), "--tls-key", str(pki.other_key)], {},
         "are not a usable TLS pair"),
        (["--tls-cert", str(pki.key), "--tls-key", str(pki.key)], {},
         "are not a usable TLS pair"),
    ]


@pytest.mark.parametrize("case", range(8))
def test_bad_options_are_one_line_before_anything_starts(
        home_settings: Any, pki: Pki, tmp_path: Path, case: int) -> None:
    args, env, message = _bad_combinations(pki, tmp_path)[case]
    # "Before anything starts": run_cli's own timeout fails a server that started instead.
    result = run_cli("serve", "churn@champion", "--port", "0", *args,
                     env={**cli_env(home_settings), **env})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_encrypted_key_and_busy_port_are_one_line(home_settings: Any, pki: Pki,
                                                  tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    plain = serialization.load_pem_private_key(pki.key.read_bytes(), None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(plain.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    result = run_cli("serve", "churn@champion", "--port", "0", "--tls-cert", str(pki.cert),
                     "--tls-key", str(encrypted), env=cli_env(home_settings))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "is encrypted" in result.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("serve", "churn@champion", "--workers", "2", "--port", str(port),
                         env=cli_env(home_settings))
    assert result.returncode == 8
    assert result.stderr.count("\n") == 1, result.stderr
    assert f"Cannot listen on 127.0.0.1:{port}" in result.stderr


def test_control_plane_server_checks_tls_the_same_way(home_settings: Any, pki: Pki) -> None:
    result = run_cli("server", "--port", "0", "--tls-cert", str(pki.cert),
                     env=cli_env(home_settings))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: HTTPS needs a certificate and its private key; a certificate was given "
        "without its private key: --tls-key (or MLHARBOR_SERVER__TLS_KEYFILE). Give both, "
        "or neither for plain HTTP.")
