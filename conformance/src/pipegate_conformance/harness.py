"""Start, watch and stop the processes of a tunnel: server, client and origin app.

Used by the conformance suite, the end-to-end tests, the benchmarks and the demo.
Every process is started in its own process group with its output in a log file, is
polled for readiness rather than waited for blindly, and is stopped by
:meth:`ProcessGroup.close` even when a test fails (SIGTERM, then SIGKILL).

Third-party implementations plug in through command templates with the placeholders
``{port}``, ``{token}``, ``{local_url}`` and ``{server_url}`` (see
:func:`render_command`).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

__all__ = [
    "HarnessError",
    "ManagedProcess",
    "ProcessGroup",
    "Tunnel",
    "client_command",
    "free_port",
    "group_rss",
    "origin_command",
    "process_rss",
    "render_command",
    "server_command",
    "start_tunnel",
    "wait_for_http",
    "wait_for_port",
]

_BIN = Path(sys.executable).parent


class HarnessError(RuntimeError):
    """A process did not start, did not become ready, or died unexpectedly."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    """Poll until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise HarnessError(f"nothing listens on {host}:{port} after {timeout}s") from exc
            time.sleep(0.05)


def wait_for_http(
    url: str,
    *,
    timeout: float = 15.0,
    ok: Sequence[int] = (200,),
    verify: bool | str = True,
    process: ManagedProcess | None = None,
) -> httpx.Response:
    """Poll ``url`` until it answers with a status in ``ok``; fail early if ``process`` dies."""
    deadline = time.monotonic() + timeout
    last: str = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise HarnessError(f"{process.name} exited early:\n{process.output()[-2000:]}")
        try:
            response = httpx.get(url, timeout=2.0, verify=verify)
            if response.status_code in ok:
                return response
            last = f"status {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.05)
    raise HarnessError(f"{url} not ready after {timeout}s ({last})")


def render_command(template: str, **values: object) -> list[str]:
    """Split a command template and fill its ``{placeholders}``.

    >>> render_command("srv --port {port} --client-token {token}", port=1, token="t")
    ['srv', '--port', '1', '--client-token', 't']
    """
    return [part.format(**values) for part in shlex.split(template)]


def _script(name: str) -> str:
    candidate = _BIN / name
    return str(candidate) if candidate.exists() else name


def server_command(port: int, token: str, *extra: str, host: str = "127.0.0.1") -> list[str]:
    """Command line of our own ``pipegate-server``."""
    return [
        _script("pipegate-server"),
        "--host",
        host,
        "--port",
        str(port),
        "--client-token",
        token,
        *extra,
    ]


def client_command(local_url: str, server_url: str, token: str, *extra: str) -> list[str]:
    """Command line of our own ``pipegate-client``."""
    return [
        _script("pipegate-client"),
        "--local-url",
        local_url,
        "--server-url",
        server_url,
        "--client-token",
        token,
        *extra,
    ]


def origin_command(port: int, host: str = "127.0.0.1", *, http: str | None = None) -> list[str]:
    """Command line of the origin app (:mod:`pipegate_conformance.origin`).

    ``http="h11"`` picks uvicorn's h11 parser, which accepts every method token (the
    default httptools parser knows a fixed list of methods).
    """
    argv = [
        sys.executable,
        "-m",
        "pipegate_conformance.origin",
        "--host",
        host,
        "--port",
        str(port),
    ]
    if http:
        argv += ["--http", http]
    return argv


def process_rss(pid: int) -> int:
    """Resident memory of a process in bytes (``VmRSS`` from ``/proc``); 0 if gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def group_rss(pgid: int) -> int:
    """Total resident memory of every process in process group ``pgid`` (a command
    template may start a wrapper that starts the real program)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and int(fields[2]) == pgid:
            total += process_rss(int(entry.name))
    return total


@dataclass
class ManagedProcess:
    """A child process in its own process group, its output captured in a log file."""

    name: str
    argv: list[str]
    env: Mapping[str, str] | None = None
    log_path: Path = field(init=False)
    _popen: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        fd, path = tempfile.mkstemp(prefix=f"pipegate-{self.name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(path)

    def start(self) -> ManagedProcess:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.env:
            env.update(self.env)
        with self.log_path.open("ab") as log:
            self._popen = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        if self._popen is None:
            raise HarnessError(f"{self.name} was not started")
        return self._popen.pid

    def poll(self) -> int | None:
        return None if self._popen is None else self._popen.poll()

    def output(self) -> str:
        """Everything the process printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_output(self, needle: str, timeout: float = 15.0) -> str:
        """Poll the log until ``needle`` appears; returns the output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.output()
            if needle in text:
                return text
            if self.poll() is not None:
                raise HarnessError(
                    f"{self.name} exited before printing {needle!r}:\n{text[-2000:]}"
                )
            time.sleep(0.05)
        raise HarnessError(
            f"{self.name} did not print {needle!r} in {timeout}s:\n{self.output()[-2000:]}"
        )

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the process (not its group)."""
        if self._popen is not None and self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._popen.pid, signum)

    def wait(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the exit; returns the exit code or None."""
        if self._popen is None:
            return None
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL to the whole group after ``timeout``; returns the exit code."""
        if self._popen is None:
            return None
        if self._popen.poll() is None:
            self._signal_group(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            self._signal_group(signal.SIGTERM)
            try:
                self._popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._popen.wait(5)
        else:
            self._signal_group(signal.SIGKILL)  # leftovers in the group
        return self._popen.returncode

    def kill(self) -> None:
        """SIGKILL the whole group at once (a crash, as far as peers can tell)."""
        if self._popen is not None:
            self._signal_group(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(5)

    def _signal_group(self, signum: int) -> None:
        assert self._popen is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signum)


class ProcessGroup:
    """Owns processes and stops all of them on :meth:`close`, in reverse start order."""

    def __init__(self) -> None:
        self.processes: list[ManagedProcess] = []

    def start(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> ManagedProcess:
        process = ManagedProcess(name, list(argv), env)
        self.processes.append(process)
        return process.start()

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop(timeout=5.0)
        for process in self.processes:
            with contextlib.suppress(OSError):
                process.log_path.unlink()
        self.processes.clear()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@dataclass
class Tunnel:
    """A running tunnel: where to reach it and the processes behind it."""

    server_base: str  # e.g. http://127.0.0.1:8000
    connection_id: str
    token: str
    origin_url: str
    server: ManagedProcess | None
    client: ManagedProcess | None
    origin: ManagedProcess | None

    def __repr__(self) -> str:  # short: hypothesis prints it in every falsifying example
        return f"Tunnel({self.public_url!r} -> {self.origin_url!r})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    @property
    def public_url(self) -> str:
        """The base URL callers use: ``<server_base>/<connection_id>``."""
        return f"{self.server_base}/{self.connection_id}"

    @property
    def server_ws_url(self) -> str:
        scheme = "wss" if self.server_base.startswith("https") else "ws"
        return f"{scheme}://{self.server_base.split('://', 1)[1]}/{self.connection_id}"


def wait_for_tunnel(
    public_url: str,
    *,
    timeout: float = 20.0,
    verify: bool | str = True,
    process: ManagedProcess | None = None,
) -> None:
    """Poll the public URL until the tunnel relays (anything but 404/502/503)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise HarnessError(f"{process.name} exited early:\n{process.output()[-2000:]}")
        try:
            response = httpx.get(f"{public_url}/echo/ready", timeout=2.0, verify=verify)
            if response.status_code == 200:
                return
            last = f"status {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.05)
    raise HarnessError(f"tunnel {public_url} not relaying after {timeout}s ({last})")


def start_tunnel(
    group: ProcessGroup,
    *,
    token: str = "conformance-token",
    connection_id: str = "node",
    server_base: str | None = None,
    server_template: str | None = None,
    client_template: str | None = None,
    server_args: Sequence[str] = (),
    client_args: Sequence[str] = (),
    origin_url: str | None = None,
    server_port: int | None = None,
    verify: bool | str = True,
    env: Mapping[str, str] | None = None,
) -> Tunnel:
    """Start whatever is not given (origin, server, client) and wait until it relays.

    ``server_base`` points at an already running server (nothing is started for it);
    ``server_template``/``client_template`` launch third-party implementations.
    """
    origin: ManagedProcess | None = None
    if origin_url is None:
        origin_port = free_port()
        origin = group.start("origin", origin_command(origin_port), env)
        origin_url = f"http://127.0.0.1:{origin_port}"
        wait_for_http(f"{origin_url}/echo/ready", process=origin)

    server: ManagedProcess | None = None
    if server_base is None:
        port = server_port or free_port()
        argv = (
            render_command(server_template, port=port, token=token)
            if server_template
            else server_command(port, token, *server_args)
        )
        server = group.start("server", argv, env)
        server_base = f"http://127.0.0.1:{port}"
        wait_for_port("127.0.0.1", port)

    tunnel = Tunnel(server_base, connection_id, token, origin_url, server, None, origin)
    argv = (
        render_command(
            client_template,
            local_url=origin_url,
            server_url=tunnel.server_ws_url,
            token=token,
        )
        if client_template
        else client_command(origin_url, tunnel.server_ws_url, token, *client_args)
    )
    tunnel.client = group.start("client", argv, env)
    wait_for_tunnel(tunnel.public_url, verify=verify, process=tunnel.client)
    return tunnel


@contextlib.contextmanager
def running_tunnel(**kwargs: object) -> Iterator[Tunnel]:
    """``with running_tunnel() as tunnel:`` — a whole tunnel, torn down on exit."""
    with ProcessGroup() as group:
        yield start_tunnel(group, **kwargs)  # type: ignore[arg-type]
