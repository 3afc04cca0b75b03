"""Run the serving app under uvicorn (uvloop + httptools), in one process or in N workers
sharing one port, over HTTP or HTTPS, draining in-flight work on SIGTERM.

What a process serves comes from an :data:`AppBuilder`: a zero-argument, picklable callable
returning ``(asgi_app, close)``. The caller (an entry point, which may wire monitoring in) owns
what is opened; ``close`` runs once the app's own shutdown is done.

* One process (:func:`run_server`): the app is built here. On SIGTERM/SIGINT uvicorn stops
  accepting, waits up to ``serving.drain_timeout_s`` for requests in flight, runs the app's
  shutdown (stop polling, flush the sink), then ``close``; the process exits with status 0.
* N workers (:func:`run_workers`): this process binds the socket and supervises; uvicorn's
  supervisor *spawns* (not forks: no inherited threads, locks or database connections) N
  processes that each call the builder, so each has its own registry connection, model pool,
  metrics and sink, and accepts on the shared socket. SIGTERM/SIGINT to the parent reaches
  every worker, each drains as above, and the parent exits with status 0 once all are gone.
  A worker that dies is replaced; one that cannot start stops them all (exit status 8).
  SIGHUP restarts the workers one by one, SIGTTIN/SIGTTOU add or remove one. ``/metrics``
  adds up every worker's numbers, whichever worker answers the scrape: the parent creates a
  folder for this server (removed when it stops) where each worker keeps a snapshot of its
  metrics (mlharbor.telemetry.metrics), handed to the app's ``share_metrics``.

The socket is bound here in both cases, so a busy port is one clear error, and port 0 is
resolved once for every worker. TLS files are checked before anything starts
(:func:`check_tls`): every worker would otherwise fail on its own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlharbor.core.errors import InvalidInputError, UnavailableError

if TYPE_CHECKING:
    from mlharbor.settings import Settings

log = logging.getLogger("mlharbor.serving")

# Builds what one process serves: the ASGI app and what closes the resources it opened.
AppBuilder = Callable[[], tuple[Any, Callable[[], None]]]
# uvicorn's exit status for "the app, TLS or socket is broken": a worker exiting with it is
# not restarted (it would fail the same way again) and its supervisor stops.
STARTUP_FAILURE = 3


@dataclasses.dataclass(frozen=True, slots=True)
class Listener:
    """Where and how the server listens: address, worker processes, TLS files."""

    host: str
    port: int
    workers: int = 1
    certfile: Path | None = None
    keyfile: Path | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.certfile is not None else "http"


def listener_from(settings: Settings, *, host: str | None = None, port: int | None = None,
                  workers: int | None = None, certfile: Path | None = None,
                  keyfile: Path | None = None) -> Listener:
    """The listener for CLI overrides falling back to ``settings.server``, checked whole."""
    server = settings.server
    count = server.workers if workers is None else workers
    if count < 1:
        raise InvalidInputError(f"--workers must be 1 or more; received {count}.",
                                field="workers", received=count)
    cert = certfile if certfile is not None else server.tls_certfile
    key = keyfile if keyfile is not None else server.tls_keyfile
    check_tls(cert, key)
    return Listener(host or server.host, server.port if port is None else port, count,
                    cert, key)


def check_tls(certfile: Path | None, keyfile: Path | None) -> None:
    """Refuse, with one clear line, TLS files that would make every worker fail to start:
    half a pair, a missing or unreadable file, something that is not a PEM certificate and
    its unencrypted private key."""
    import ssl

    if certfile is None and keyfile is None:
        return
    if certfile is None or keyfile is None:
        cert_flag = "--tls-cert (or MLHARBOR_SERVER__TLS_CERTFILE)"
        key_flag = "--tls-key (or MLHARBOR_SERVER__TLS_KEYFILE)"
        given, missing = (("a certificate", f"its private key: {key_flag}")
                          if keyfile is None else ("a private key", f"its certificate: "
                                                                    f"{cert_flag}"))
        raise InvalidInputError(
            f"HTTPS needs a certificate and its private key; {given} was given without "
            f"{missing}.", hint="Give both, or neither for plain HTTP.")
    for flag, path in (("--tls-cert", certfile), ("--tls-key", keyfile)):
        try:
            with path.open("rb") as handle:
                handle.read(1)
        except OSError as exc:
            raise InvalidInputError(
                f"Cannot read the {flag} file {str(path)!r}: {exc.strerror}.",
                field=flag, received=str(path)) from exc

    def no_password() -> bytes:
        raise _EncryptedKeyError

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(certfile, keyfile, password=no_password)
    except _EncryptedKeyError as exc:
        raise InvalidInputError(
            f"The --tls-key file {str(keyfile)!r} is encrypted; the server cannot ask for "
            "its passphrase.",
            hint="Give it an unencrypted key, readable only by its user "
            "(openssl pkey -in KEY -out PLAIN.key; chmod 0600 PLAIN.key).") from exc
    except (ssl.SSLError, OSError) as exc:
        raise InvalidInputError(
            f"{str(certfile)!r} and {str(keyfile)!r} are not a usable TLS pair (expected a "
            "PEM certificate chain and the PEM private key that matches it).",
            hint="Check that the key belongs to the certificate: openssl x509 -noout "
            "-pubkey -in CERT and openssl pkey -pubout -in KEY print the same key.",
        ) from exc


class _EncryptedKeyError(Exception):
    """Raised by the password callback: an encrypted key must not prompt on a terminal."""


def run_server(settings: Settings, build: AppBuilder, listener: Listener) -> None:
    """Serve in this process until SIGTERM/SIGINT (see the module docstring)."""
    import uvicorn

    sock = bind(listener)
    try:
        app = _ClosingApp(*build())
        _listening(app.app, listener.host)
    except BaseException:
        sock.close()
        raise
    try:
        server = uvicorn.Server(_config(settings, app, listener, sock))
        # uvicorn drains, restores the previous handlers and re-raises the signal it caught;
        # with these handlers that re-raise ends the process with status 0, not "killed".
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _exit_cleanly)
        _announce(listener, sock)
        server.run(sockets=[sock])
    finally:
        app.close()  # already done after a normal shutdown; here for a start that failed
        sock.close()


def run_workers(settings: Settings, build: AppBuilder, listener: Listener) -> None:
    """Serve with ``listener.workers`` processes until SIGTERM/SIGINT (see the module
    docstring); ``build`` is pickled into each worker, which calls it once."""
    import shutil
    import tempfile

    from uvicorn.supervisors import Multiprocess

    sock = bind(listener)
    shared = Path(tempfile.mkdtemp(prefix="mlharbor-metrics-"))
    try:
        config = _config(settings, _WorkerApp(build, shared, listener.host), listener, sock,
                         factory=True, workers=listener.workers)
        supervisor = Multiprocess(config, sockets=[sock])
        _announce(listener, sock)
        supervisor.run()
    finally:
        sock.close()
        shutil.rmtree(shared, ignore_errors=True)
    failed = [p.pid for p in supervisor.processes if p.exitcode == STARTUP_FAILURE]
    if failed:
        raise UnavailableError(
            f"A serving worker (pid {failed[0]}) failed to start, so every worker was stopped.",
            hint="Its log lines above say why.")


def bind(listener: Listener) -> socket.socket:
    """The listening socket, bound here so that a busy port is one clear error."""
    family = socket.AF_INET6 if ":" in listener.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((listener.host, listener.port))
    except OSError as exc:
        sock.close()
        raise UnavailableError(
            f"Cannot listen on {listener.host}:{listener.port}: {exc.strerror}.",
            hint="Pick another --port (0 picks a free one) or stop what holds it.") from exc
    sock.set_inheritable(True)
    return sock


def _config(settings: Settings, app: Any, listener: Listener, sock: socket.socket,
            **extra: Any) -> Any:
    import uvicorn

    return uvicorn.Config(
        app, host=listener.host, port=sock.getsockname()[1], loop="uvloop", http="httptools",
        lifespan="on", access_log=False, server_header=False, log_config=None,
        log_level="info",
        timeout_graceful_shutdown=math.ceil(settings.serving.drain_timeout_s) or None,
        ssl_certfile=listener.certfile, ssl_keyfile=listener.keyfile, **extra,
    )


def _announce(listener: Listener, sock: socket.socket) -> None:
    port = sock.getsockname()[1]
    log.info("serving on %s://%s:%d with %d worker process(es)", listener.scheme,
             listener.host, port, listener.workers,
             extra={"event": "serving.start", "port": port, "workers": listener.workers})


class _WorkerApp:
    """The app factory each worker process calls: the builder's app, closed after shutdown,
    sharing its metrics through ``metrics_dir`` with the other workers.

    A worker whose app cannot be built logs why and exits with uvicorn's startup-failure
    status, so its supervisor stops instead of restarting it forever.
    """

    def __init__(self, build: AppBuilder, metrics_dir: Path | None = None,
                 host: str | None = None) -> None:
        self.build = build
        self.metrics_dir = metrics_dir
        self.host = host

    def __call__(self) -> _ClosingApp:
        try:
            app, close = self.build()
            share = getattr(app, "share_metrics", None)
            if self.metrics_dir is not None and share is not None:
                share(self.metrics_dir)
            if self.host is not None:
                _listening(app, self.host)
        except Exception as exc:
            log.error("serving worker failed to start: %s", " ".join(str(exc).split()),
                      extra={"event": "serving.worker_failed", "error": type(exc).__name__})
            sys.exit(STARTUP_FAILURE)
        return _ClosingApp(app, close)


class _ClosingApp:
    """Passes everything to ``app``; once its lifespan shutdown is done, runs ``close`` (in a
    thread: flushing a prediction log does file I/O) before telling the server so."""

    def __init__(self, app: Any, close: Callable[[], None]) -> None:
        self.app = app
        self._close = close
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._close()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_closing(message: dict[str, Any]) -> None:
            if message["type"] in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                await asyncio.to_thread(self.close)
            await send(message)

        await self.app(scope, receive, send_closing)


def _listening(app: Any, host: str) -> None:
    """Tell a serving app the address it really listens on (its Host allowlist)."""
    listening_on = getattr(app, "listening_on", None)
    if listening_on is not None:
        listening_on(host)


def _exit_cleanly(signum: int, frame: Any) -> None:
    sys.exit(0)
