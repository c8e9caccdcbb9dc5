"""Real Mosquitto and Redis servers as child processes on loopback ports.

Used by the test suite (one broker and one Redis per session, plus private
ones for fault injection) and by ``cloudtutor demo`` to bring up local
servers. Each server:

* listens on ``127.0.0.1`` on a free port (found by binding port 0; if the
  port is taken between that check and the server's own bind, start-up is
  retried on a new port, unless the caller fixed the port);
* runs in its own temporary folder (config, log, persistence), which
  survives restarts so that a restarted Mosquitto finds its database;
* is "ready" only once it answers its protocol: Mosquitto a CONNACK to an
  MQTT CONNECT, Redis ``+PONG`` to ``PING`` (after ``AUTH`` when it has a
  password), not merely once its port accepts TCP;
* is stopped by PID: SIGTERM, then SIGKILL after a timeout. ``kill()`` is
  kill -9 (no clean shutdown, Mosquitto does not save its database) and
  ``restart()`` brings it back on the same port; ``pause()``/``resume()``
  (SIGSTOP/SIGCONT) freeze it without closing any socket.

The probes speak the wire protocols directly (a few bytes each), so this
module needs neither paho nor redis-py and works under every extra.
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from pydantic import SecretStr

from cloudtutor.config.common import MqttSettings, RedisSettings

LOOPBACK = "127.0.0.1"

# Binaries are looked up on PATH and then here: sbin folders are often not on
# a normal user's PATH, and Debian installs mosquitto in /usr/sbin.
_EXTRA_BIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/usr/bin", "/usr/local/bin", "/sbin")



def die_with_parent() -> None:
    """``preexec_fn`` of child processes (Linux): SIGTERM when the process
    that started them dies, even by SIGKILL (a test's timeout, a killed
    demo), so that no server or service outlives it. Elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

class ServerError(RuntimeError):
    """A local server could not be found, started or stopped."""


class ServerNotFoundError(ServerError):
    """The server's binary is not installed."""


class ServerStartError(ServerError):
    """The server exited or did not answer its protocol in time; the message holds its log tail."""


class PortInUseError(ServerStartError):
    """The server could not bind its port (someone took it after we checked)."""


def find_binary(name: str, env_var: str | None = None) -> str:
    """Absolute path of ``name``: ``$env_var`` if set, else PATH, else the sbin folders."""
    if env_var and os.environ.get(env_var):
        path = os.environ[env_var]
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise ServerNotFoundError(f"{env_var}={path!r} is not an executable file")
        return path
    found = shutil.which(name)
    if found is None:
        extra = os.pathsep.join(_EXTRA_BIN_DIRS)
        found = shutil.which(name, path=extra)
    if found is None:
        raise ServerNotFoundError(f"{name} not found on PATH: run `make setup` (or set {env_var or 'PATH'})")
    return found


def free_port(host: str = LOOPBACK) -> int:
    """A port that was free a moment ago (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


# Every running server (strong references: a server object dropped without
# stop() must still be stopped), so that an interpreter that exits without
# stopping them (a failed test run, an exception in the demo) leaves no
# orphans. A SIGKILLed parent cannot clean up; the servers then keep running.
_LIVE: set[_ServerProcess] = set()


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):  # stop() removes it from the set
        with contextlib.suppress(Exception):
            server.stop(timeout=3.0)


_S = TypeVar("_S", bound="_ServerProcess")


class _ServerProcess:
    """One server child process: start, readiness, stop by PID, restart on the same port."""

    name = "server"
    binary_name = ""
    binary_env = ""
    _bind_error_markers: tuple[str, ...] = ("Address already in use",)

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = LOOPBACK,
        workdir: str | os.PathLike[str] | None = None,
        start_timeout_s: float = 20.0,
        stop_timeout_s: float = 10.0,
        binary: str | None = None,
    ) -> None:
        self.host = host
        self._fixed_port = port is not None
        self._port: int | None = port
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        # Resolve the binary now: a missing server is a set-up error that
        # should surface before anything else is started.
        self.binary = binary or find_binary(self.binary_name, self.binary_env)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir).resolve() if workdir is not None else Path(tempfile.mkdtemp(prefix=f"cloudtutor-{self.name}-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._lock = threading.RLock()

    # ---- what subclasses provide -------------------------------------------------

    def _command(self, port: int) -> list[str]:
        raise NotImplementedError

    def _probe(self, sock: socket.socket) -> bool:
        """Speak the protocol on a connected socket; True when the server answered."""
        raise NotImplementedError

    @property
    def url(self) -> str:
        raise NotImplementedError

    # ---- state ------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise ServerError(f"{self.name} has no port yet: call start() first")
        return self._port

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def paused(self) -> bool:
        return self._paused

    def log_tail(self, max_chars: int = 4000) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return text[-max_chars:]

    # ---- lifecycle ----------------------------------------------------------------

    def start(self: _S) -> _S:
        """Start the server and wait until it answers; a no-op if it is running.

        The first start picks a free port (retrying on a collision) unless one
        was given; every later start reuses it.
        """
        with self._lock:
            if self.running:
                return self
            attempts = 1 if self._fixed_port else 5
            last: ServerStartError | None = None
            for _ in range(attempts):
                port = self._port if self._fixed_port else free_port(self.host)
                assert port is not None
                try:
                    self._spawn(port)
                    # From now on the server keeps this port: clients hold it,
                    # and a restart (or kill() then start()) must come back there.
                    self._port, self._fixed_port = port, True
                    _LIVE.add(self)
                    return self
                except PortInUseError as exc:
                    last = exc  # lost a race for the port: pick another one
            assert last is not None
            raise last

    def _spawn(self, port: int) -> None:
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            # A session of its own: a Ctrl-C in the demo's terminal reaches the
            # demo, which then stops its servers in order, instead of killing
            # the servers under its feet.
            proc = subprocess.Popen(
                self._command(port),
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        except OSError as exc:
            raise ServerStartError(f"cannot run {self.binary}: {exc}") from exc
        finally:
            log.close()
        self._proc = proc
        self._paused = False
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            code = proc.poll()
            if code is not None:
                self._proc = None
                tail = self._log_since(offset)
                cls = PortInUseError if any(m in tail for m in self._bind_error_markers) else ServerStartError
                raise cls(f"{self.name} exited with code {code} while starting on port {port}; log:\n{tail}")
            if self._ready(port):
                return
            if time.monotonic() > deadline:
                self._terminate(proc, timeout=2.0)
                self._proc = None
                raise ServerStartError(
                    f"{self.name} did not answer on {self.host}:{port} within {self.start_timeout_s:g} s; "
                    f"log:\n{self._log_since(offset)}"
                )
            time.sleep(0.02)  # polling readiness: nothing to wait on but the port

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                return fh.read().decode("utf-8", errors="replace")[-4000:]
        except OSError:
            return ""

    def _ready(self, port: int) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=1.0) as sock:
                sock.settimeout(2.0)
                return self._probe(sock)
        except OSError:
            return False

    def stop(self, timeout: float | None = None) -> None:
        """Graceful stop by PID: SIGTERM, then SIGKILL after ``timeout`` (default stop_timeout_s)."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None:
                self._terminate(proc, self.stop_timeout_s if timeout is None else timeout)
            self._paused = False
            _LIVE.discard(self)

    def kill(self) -> None:
        """kill -9: the server dies without cleaning up or saving anything."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10.0)
            self._paused = False
            _LIVE.discard(self)

    def restart(self: _S, *, kill: bool = False) -> _S:
        """Stop (or kill -9 with ``kill=True``) and start again on the same port and folder."""
        with self._lock:
            if kill:
                self.kill()
            else:
                self.stop()
            return self.start()

    def pause(self) -> None:
        """SIGSTOP: the process freezes, its sockets stay open (a hung server)."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                raise ServerError(f"{self.name} is not running")
            os.kill(self._proc.pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """SIGCONT after pause()."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                os.kill(self._proc.pid, signal.SIGCONT)
            self._paused = False

    @contextlib.contextmanager
    def paused_for(self) -> Iterator[None]:
        """``with server.paused_for(): ...`` pauses and always resumes, even on error."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    def close(self) -> None:
        """Stop and remove the temporary folder (when this object created it)."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self: _S) -> _S:
        try:
            return self.start()
        except BaseException:
            self.close()  # __exit__ will not run: do not leave the folder behind
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self._port} pid={self.pid} {state}>"

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
        if proc.poll() is not None:
            return
        proc.terminate()
        # A SIGSTOPped process only acts on SIGTERM once it runs again.
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10.0)


class MosquittoServer(_ServerProcess):
    """A Mosquitto 2.x broker with the settings brief §10.4 asks to set deliberately.

    Parameters (defaults in brackets):

    * ``max_queued_messages`` [1000]: QoS 1/2 messages queued per client beyond
      those in flight. Mosquitto silently DROPS messages (QoS 1 included)
      beyond this, so the end-to-end acks (§10.4) must cover it.
    * ``max_inflight_messages`` [32]: QoS 1/2 messages in flight from the
      broker to one client (1 would force strict in-order delivery); Mosquitto
      also advertises it to MQTT v5 clients as its Receive Maximum, so it
      matches ``MqttSettings.max_inflight`` (Mosquitto's own default is 20).
    * ``message_size_limit`` [16 MiB]: the largest payload accepted; an MQTT v5
      QoS 1 publisher gets a failure PUBACK above it.
    * ``persistence`` [True] in the server's folder; ``autosave_interval_s``
      [60]: Mosquitto writes its database only at shutdown (SIGTERM) and
      every autosave interval, so after ``kill()`` whatever changed since the
      last save is lost (``save()`` forces a write).
    * ``allow_anonymous`` [True unless a password file is given],
      ``password_file`` and ``acl_file`` (paths, written by the caller with
      ``mosquitto_passwd``), ``extra_config`` (lines appended verbatim).
    """

    name = "mosquitto"
    binary_name = "mosquitto"
    binary_env = "CLOUDTUTOR_MOSQUITTO"

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = LOOPBACK,
        workdir: str | os.PathLike[str] | None = None,
        max_queued_messages: int = 1000,
        max_inflight_messages: int = 32,
        message_size_limit: int = 16 * 1024 * 1024,
        persistence: bool = True,
        autosave_interval_s: int = 60,
        allow_anonymous: bool | None = None,
        password_file: str | os.PathLike[str] | None = None,
        acl_file: str | os.PathLike[str] | None = None,
        extra_config: Sequence[str] = (),
        start_timeout_s: float = 20.0,
        stop_timeout_s: float = 10.0,
        binary: str | None = None,
    ) -> None:
        super().__init__(
            port=port, host=host, workdir=workdir, start_timeout_s=start_timeout_s,
            stop_timeout_s=stop_timeout_s, binary=binary,
        )
        self.max_queued_messages = max_queued_messages
        self.max_inflight_messages = max_inflight_messages
        self.message_size_limit = message_size_limit
        self.persistence = persistence
        self.autosave_interval_s = autosave_interval_s
        self.password_file = Path(password_file) if password_file is not None else None
        self.acl_file = Path(acl_file) if acl_file is not None else None
        self.allow_anonymous = (self.password_file is None) if allow_anonymous is None else allow_anonymous
        self.extra_config = list(extra_config)
        self.config_path = self.workdir / "mosquitto.conf"
        self._probe_count = 0

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def mqtt_settings(self, **overrides: object) -> MqttSettings:
        """MqttSettings pointing at this broker (overrides for any other field)."""
        return MqttSettings(host=self.host, port=self.port, **overrides)  # type: ignore[arg-type]

    def save(self) -> None:
        """SIGUSR1: write the persistence database now (so a later kill() keeps it)."""
        if self._proc is None or self._proc.poll() is not None:
            raise ServerError("mosquitto is not running")
        os.kill(self._proc.pid, signal.SIGUSR1)

    def config_text(self, port: int) -> str:
        lines = [
            "# written by cloudtutor.testing.servers",
            f"listener {port} {self.host}",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            f"max_queued_messages {self.max_queued_messages}",
            f"max_inflight_messages {self.max_inflight_messages}",
            f"message_size_limit {self.message_size_limit}",
            f"persistence {'true' if self.persistence else 'false'}",
            # The trailing slash matters: mosquitto appends the file name to it.
            f"persistence_location {self.workdir}/",
            f"autosave_interval {self.autosave_interval_s}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
        ]
        if os.geteuid() == 0:
            # As root, mosquitto switches to the `mosquitto` user, which cannot
            # write our temporary folder; stay the user we are.
            lines.append(f"user {getpass.getuser()}")
        if self.password_file is not None:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        lines.extend(self.extra_config)
        return "\n".join(lines) + "\n"

    def _command(self, port: int) -> list[str]:
        self.config_path.write_text(self.config_text(port), encoding="utf-8")
        return [self.binary, "-c", str(self.config_path)]

    def _probe(self, sock: socket.socket) -> bool:
        # MQTT 3.1.1 CONNECT (clean session, keep-alive 10 s); any CONNACK,
        # even "not authorised" from a broker with a password file, means the
        # broker is serving.
        self._probe_count += 1
        client_id = f"ct-probe-{os.getpid()}-{self._probe_count}".encode()
        variable = b"\x00\x04MQTT\x04\x02\x00\x0a"
        payload = struct.pack(">H", len(client_id)) + client_id
        body = variable + payload
        sock.sendall(bytes([0x10, len(body)]) + body)
        reply = _recv_exactly(sock, 4)
        if len(reply) != 4 or reply[0] != 0x20:
            return False
        with contextlib.suppress(OSError):
            sock.sendall(b"\xe0\x00")  # DISCONNECT: no will, no log noise
        return True


class RedisServer(_ServerProcess):
    """A ``redis-server`` with no snapshots (``--save ""``) by default.

    Parameters: ``appendonly`` [False] (AOF in the server's folder, so data
    survives ``restart()``), ``appendfsync`` ["everysec", Redis' own default;
    "always" fsyncs before each reply, so a write Redis acknowledged survives
    kill -9: what the fault suite and the demo use, brief §10.4],
    ``password`` [None] (``--requirepass``),
    ``maxmemory`` [None, e.g. "256mb"] with ``maxmemory_policy``
    ["noeviction": writes fail loudly instead of silently evicting frames],
    ``extra_args`` (passed verbatim).
    """

    name = "redis"
    binary_name = "redis-server"
    binary_env = "CLOUDTUTOR_REDIS_SERVER"

    def __init__(
        self,
        *,
        port: int | None = None,
        host: str = LOOPBACK,
        workdir: str | os.PathLike[str] | None = None,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        password: str | None = None,
        maxmemory: str | None = None,
        maxmemory_policy: str = "noeviction",
        extra_args: Sequence[str] = (),
        start_timeout_s: float = 20.0,
        stop_timeout_s: float = 10.0,
        binary: str | None = None,
    ) -> None:
        super().__init__(
            port=port, host=host, workdir=workdir, start_timeout_s=start_timeout_s,
            stop_timeout_s=stop_timeout_s, binary=binary,
        )
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync must be always, everysec or no, not {appendfsync!r}")
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.password = password
        self.maxmemory = maxmemory
        self.maxmemory_policy = maxmemory_policy
        self.extra_args = list(extra_args)

    @property
    def url(self) -> str:
        """``redis://host:port/0``; the password is not in it (see redis_settings)."""
        return f"redis://{self.host}:{self.port}/0"

    def redis_settings(self, **overrides: object) -> RedisSettings:
        """RedisSettings pointing at this server, with its password if it has one."""
        password = SecretStr(self.password) if self.password is not None else None
        fields: dict[str, object] = {"url": self.url, "password": password}
        fields.update(overrides)
        return RedisSettings(**fields)  # type: ignore[arg-type]

    def _command(self, port: int) -> list[str]:
        cmd = [
            self.binary,
            "--port", str(port),
            "--bind", self.host,
            "--dir", str(self.workdir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--daemonize", "no",
            "--logfile", "",
        ]
        if self.password is not None:
            cmd += ["--requirepass", self.password]
        if self.maxmemory is not None:
            cmd += ["--maxmemory", self.maxmemory, "--maxmemory-policy", self.maxmemory_policy]
        return cmd + self.extra_args

    def _probe(self, sock: socket.socket) -> bool:
        if self.password is not None:
            sock.sendall(_resp("AUTH", self.password))
            if not _recv_line(sock).startswith(b"+OK"):
                return False
        sock.sendall(_resp("PING"))
        # "-LOADING" while an AOF is replayed: not ready yet.
        return _recv_line(sock).startswith(b"+PONG")


def _resp(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        data = part.encode()
        out.append(f"${len(data)}\r\n".encode() + data + b"\r\n")
    return b"".join(out)


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            break
        buf += chunk
    return buf


def _recv_line(sock: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\r\n") and len(buf) < 4096:
        chunk = sock.recv(1)
        if not chunk:
            break
        buf += chunk
    return buf


__all__ = [
    "LOOPBACK",
    "MosquittoServer",
    "die_with_parent",
    "PortInUseError",
    "RedisServer",
    "ServerError",
    "ServerNotFoundError",
    "ServerStartError",
    "find_binary",
    "free_port",
]
