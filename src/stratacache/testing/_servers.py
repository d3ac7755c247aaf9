"""Real ``redis-server`` processes for tests: a standalone node and a 3-master cluster.

Each server listens on a free loopback port, keeps nothing on disk that outlives it, and
is stopped by pid. Fault controls act on the real process: ``pause()`` (SIGSTOP),
``resume()`` (SIGCONT), ``kill()`` (SIGKILL) and ``restart()`` (a new process on the
same port). On Linux every server also gets ``PR_SET_PDEATHSIG`` so that it dies with
the test process even if that process is killed before its finalizers run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

__all__ = [
    "RedisClusterProcesses",
    "RedisServerError",
    "RedisServerProcess",
    "TLSCertificates",
    "free_port",
]

_PR_SET_PDEATHSIG = 1
_READY_TIMEOUT = 10.0


class RedisServerError(RuntimeError):
    """A test server could not be started, or did not become ready in time."""


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # redis-server binds with SO_REUSEADDR, so a TIME_WAIT leftover is no obstacle
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, with_bus: bool = False) -> int:
    """Return a loopback port that is free now (and ``port + 10000`` too, with ``with_bus``).

    Cluster nodes also listen on ``port + 10000`` (the cluster bus), so cluster ports are
    drawn below 55536.
    """
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if with_bus:
            if port >= 55536:
                continue
            if not _port_is_free(port + 10000):
                continue
        return port
    raise RedisServerError("no free loopback port found")


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class TLSCertificates:
    """A throwaway CA and a server certificate it signed, made with the ``openssl`` command.

    The server certificate names ``127.0.0.1`` and ``localhost``, so clients can verify
    both the chain and the host name. Files are written under ``directory`` (default: a
    new temporary one, removed by :meth:`close`):

    - ``ca_cert``: the CA certificate a client passes as ``ssl_ca_certs``;
    - ``server_cert`` and ``server_key``: what ``redis-server`` serves.

    Two instances have unrelated CAs: a client given one's ``ca_cert`` must refuse a
    server started with the other's certificate.
    """

    def __init__(self, directory: str | Path | None = None, *, openssl: str | None = None) -> None:
        exe = openssl or shutil.which("openssl")
        if exe is None:
            raise RedisServerError(
                "openssl not found on PATH; install it (apt-get install openssl)"
            )
        self._owned = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="stratacache-tls-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_cert = self.directory / "ca.pem"
        self.ca_key = self.directory / "ca.key"
        self.server_cert = self.directory / "server.pem"
        self.server_key = self.directory / "server.key"
        csr = self.directory / "server.csr"
        ext = self.directory / "server.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        steps = [
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=stratacache test CA",
             "-keyout", str(self.ca_key), "-out", str(self.ca_cert)],
            ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
             "-keyout", str(self.server_key), "-out", str(csr)],
            ["x509", "-req", "-in", str(csr), "-days", "2", "-set_serial", "1",
             "-CA", str(self.ca_cert), "-CAkey", str(self.ca_key),
             "-extfile", str(ext), "-out", str(self.server_cert)],
        ]  # fmt: skip
        for step in steps:
            out = subprocess.run(
                [exe, *step], stdin=subprocess.DEVNULL, capture_output=True, check=False
            )
            if out.returncode != 0:
                raise RedisServerError(
                    f"openssl {step[0]} failed: {out.stderr.decode(errors='replace')}"
                )

    def server_args(self) -> list[str]:
        """``redis-server`` arguments that serve this certificate (clients need none)."""
        return [
            "--tls-cert-file", str(self.server_cert),
            "--tls-key-file", str(self.server_key),
            "--tls-ca-cert-file", str(self.ca_cert),
            "--tls-auth-clients", "no",
        ]  # fmt: skip

    def client_kwargs(self) -> dict[str, object]:
        """redis-py keyword arguments of a client that verifies the server against this CA."""
        return {"ssl": True, "ssl_ca_certs": str(self.ca_cert), "ssl_cert_reqs": "required"}

    def url_query(self) -> str:
        """The same settings as a ``rediss://`` URL query (``from_url`` reads them)."""
        return f"ssl_ca_certs={quote(str(self.ca_cert), safe='/')}&ssl_cert_reqs=required"

    def client_context(self) -> ssl.SSLContext:
        """An ``ssl`` context that trusts this CA only."""
        return ssl.create_default_context(cafile=str(self.ca_cert))

    def cli_args(self) -> list[str]:
        """``redis-cli`` arguments to talk to a server using this certificate."""
        return ["--tls", "--cacert", str(self.ca_cert)]

    def close(self) -> None:
        """Remove the files (only a directory this object created)."""
        if self._owned:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<TLSCertificates {self.directory}>"


def _ping(port: int, timeout: float = 0.5, tls: TLSCertificates | None = None) -> bytes:
    """Send one RESP command on a fresh socket; return the raw reply (no redis-py needed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        if tls is None:
            raw.sendall(b"*1\r\n$4\r\nPING\r\n")
            return raw.recv(64)
        with tls.client_context().wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64)


class RedisServerProcess:
    """One real ``redis-server`` on a loopback port, with fault controls.

    Parameters:
        port: the port to listen on (default: a free one).
        cluster: start the node with ``cluster-enabled yes``.
        extra_args: more ``--name value`` arguments for ``redis-server``.
        executable: the ``redis-server`` binary (default: found on ``PATH``).
        tls: serve TLS only (``--tls-port`` on ``port``, no plain port) with these
            certificates; a cluster node also speaks TLS on its cluster bus.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        cluster: bool = False,
        extra_args: Sequence[str] = (),
        executable: str | None = None,
        tls: TLSCertificates | None = None,
    ) -> None:
        exe = executable or shutil.which("redis-server")
        if exe is None:
            raise RedisServerError(
                "redis-server not found on PATH; install it (Debian: apt-get install redis-server)"
            )
        self.executable = exe
        self.cluster = cluster
        self.port = port if port is not None else free_port(with_bus=cluster)
        self.extra_args = tuple(extra_args)
        self.tls = tls
        self._dir = Path(tempfile.mkdtemp(prefix=f"stratacache-redis-{self.port}-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    # -- lifecycle -------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return "127.0.0.1"

    @property
    def url(self) -> str:
        """A ``redis://`` URL for this server; with ``tls``, a ``rediss://`` URL that
        verifies the server against the CA (``ssl_ca_certs``, ``ssl_cert_reqs=required``)."""
        if self.tls is not None:
            return f"rediss://{self.host}:{self.port}/0?{self.tls.url_query()}"
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        """The pid of the running process, or None."""
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the process exists (paused counts as running)."""
        return self._proc is not None and self._proc.poll() is None

    def _command(self) -> list[str]:
        if self.tls is None:
            ports = ["--port", str(self.port)]
        else:
            ports = ["--port", "0", "--tls-port", str(self.port), *self.tls.server_args()]
            if self.cluster:
                ports += ["--tls-cluster", "yes", "--tls-replication", "yes"]
        args = [
            self.executable,
            *ports,
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self._dir),
            "--daemonize", "no",
            "--protected-mode", "no",
            "--loglevel", "warning",
            "--logfile", str(self._dir / "redis.log"),
        ]  # fmt: skip
        if self.cluster:
            args += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self._dir / "nodes.conf"),
                "--cluster-node-timeout", "2000",
                "--cluster-require-full-coverage", "no",
            ]  # fmt: skip
        return args + list(self.extra_args)

    def start(self) -> RedisServerProcess:
        """Start the process and wait until it answers PING."""
        if self.running:
            return self
        try:
            self._proc = subprocess.Popen(
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                preexec_fn=_die_with_parent,
            )
        except OSError as e:
            raise RedisServerError(f"cannot run {self.executable}: {e}") from e
        self._paused = False
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                log = self.log()
                self._proc = None
                raise RedisServerError(
                    f"redis-server on port {self.port} exited at start: {err}{log}"
                )
            with contextlib.suppress(OSError):
                if _ping(self.port, tls=self.tls).startswith(b"+PONG"):
                    return
            time.sleep(0.01)
        self.stop()
        raise RedisServerError(f"redis-server on port {self.port} did not answer PING")

    def log(self) -> str:
        """The server's log so far (for failure messages)."""
        try:
            return (self._dir / "redis.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL) and wait for it. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            if self._paused:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
        self._paused = False

    def close(self) -> None:
        """Stop the process and remove its directory."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> RedisServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- fault controls ----------------------------------------------------------------

    def _signal(self, sig: signal.Signals) -> None:
        if not self.running:
            raise RedisServerError(f"redis-server on port {self.port} is not running")
        assert self._proc is not None
        os.kill(self._proc.pid, sig)

    def pause(self) -> None:
        """Freeze the process with SIGSTOP: connections stay open, nothing answers."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Let a paused process run again (SIGCONT)."""
        self._signal(signal.SIGCONT)
        self._paused = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Context manager: paused inside the block, resumed after it."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def kill(self) -> None:
        """Kill the process with SIGKILL (a crash: no shutdown, data in memory is gone)."""
        self._signal(signal.SIGKILL)
        assert self._proc is not None
        self._proc.wait()
        if self._proc.stderr is not None:
            self._proc.stderr.close()
        self._proc = None
        self._paused = False

    def restart(self) -> None:
        """Start a new process on the same port (after :meth:`kill`, or stopping it first)."""
        if self.running:
            self.stop()
        deadline = time.monotonic() + _READY_TIMEOUT
        while not _port_is_free(self.port):  # the old socket may linger for a moment
            if time.monotonic() > deadline:
                raise RedisServerError(f"port {self.port} did not become free")
            time.sleep(0.01)
        self.start()

    def __repr__(self) -> str:
        state = "paused" if self._paused else ("running" if self.running else "stopped")
        return f"<RedisServerProcess port={self.port} pid={self.pid} {state}>"


def _cli(executable: str, *args: str, timeout: float = 30.0) -> str:
    out = subprocess.run(
        [executable, *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if out.returncode != 0:
        raise RedisServerError(
            f"redis-cli {' '.join(args)} failed: {out.stdout.decode()} {out.stderr.decode()}"
        )
    return out.stdout.decode()


class RedisClusterProcesses:
    """A real Redis Cluster of ``masters`` master nodes (no replicas) on loopback.

    Nodes are joined with ``redis-cli --cluster create``; :meth:`start` returns once every
    node reports ``cluster_state:ok``. ``nodes[i]`` is a :class:`RedisServerProcess` with
    the usual fault controls; a node restarted on its port rejoins with its slots (its
    ``nodes.conf`` is kept), empty.
    """

    def __init__(
        self,
        masters: int = 3,
        *,
        executable: str | None = None,
        tls: TLSCertificates | None = None,
    ) -> None:
        if masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        self.tls = tls
        self.nodes = [
            RedisServerProcess(cluster=True, executable=executable, tls=tls) for _ in range(masters)
        ]
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RedisServerError(
                "redis-cli not found on PATH; install it (Debian: apt-get install redis-server)"
            )
        self._cli = cli

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every node."""
        return [(n.host, n.port) for n in self.nodes]

    @property
    def url(self) -> str:
        """A ``redis://`` URL of the first node (enough for ``RedisCluster.from_url``); with
        ``tls``, a ``rediss://`` URL that verifies the nodes against the CA."""
        first = self.nodes[0]
        if self.tls is not None:
            return f"rediss://{first.host}:{first.port}?{self.tls.url_query()}"
        return f"redis://{first.host}:{first.port}"

    def _tls_cli_args(self) -> list[str]:
        return self.tls.cli_args() if self.tls is not None else []

    def start(self) -> RedisClusterProcesses:
        """Start every node, create the cluster, wait for ``cluster_state:ok`` everywhere."""
        try:
            for node in self.nodes:
                node.start()
            _cli(
                self._cli, *self._tls_cli_args(), "--cluster", "create",
                *[f"{n.host}:{n.port}" for n in self.nodes],
                "--cluster-replicas", "0", "--cluster-yes",
            )  # fmt: skip
            self.wait_ok()
        except BaseException:
            self.close()
            raise
        return self

    def cluster_info(self, node: int = 0) -> dict[str, str]:
        """``CLUSTER INFO`` of one node as a dict."""
        n = self.nodes[node]
        text = _cli(
            self._cli, *self._tls_cli_args(), "-h", n.host, "-p", str(n.port),
            "cluster", "info", timeout=5,
        )  # fmt: skip
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until every running node reports ``cluster_state:ok`` and sees all slots."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                infos = [self.cluster_info(i) for i, n in enumerate(self.nodes) if n.running]
                if infos and all(
                    i.get("cluster_state") == "ok" and i.get("cluster_slots_ok") == "16384"
                    for i in infos
                ):
                    return
            except (RedisServerError, subprocess.TimeoutExpired):
                pass
            if time.monotonic() > deadline:
                raise RedisServerError("cluster did not reach cluster_state:ok")
            time.sleep(0.05)

    def close(self) -> None:
        """Stop every node and remove their directories."""
        for node in self.nodes:
            node.close()

    def __enter__(self) -> RedisClusterProcesses:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
