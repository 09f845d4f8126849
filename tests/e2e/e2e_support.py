"""Helpers shared by the end-to-end tests (imported as ``e2e_support``; the conftest
puts this folder on ``sys.path``): hashing streams, bounded polling, TLS material and a
factory that starts servers, clients and whole tunnels in one process group."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
import secrets
import shlex
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
from pipegate_conformance.harness import (
    HarnessError,
    ManagedProcess,
    ProcessGroup,
    Tunnel,
    client_command,
    free_port,
    server_command,
    wait_for_port,
)
from pipegate_conformance.origin import pattern_sha256

KiB = 1024
MiB = 1024 * 1024

#: ``PIPEGATE_E2E_NO_FAST_PATH=1`` runs every server and client of the suite with
#: ``--no-fast-path`` (public library APIs only), as CI does once.
NO_FAST_PATH = os.environ.get("PIPEGATE_E2E_NO_FAST_PATH", "") == "1"
#: Flags every server and client gets for the fast-path switch (even a server started
#: without the suite's defaults).
FAST_PATH_ARGS: tuple[str, ...] = ("--no-fast-path",) if NO_FAST_PATH else ()
#: Flags every server gets: the 100 MiB bodies of the suite must fit under the body limit.
SERVER_ARGS: tuple[str, ...] = (
    *shlex.split(os.environ.get("PIPEGATE_E2E_SERVER_ARGS", "")),
    *FAST_PATH_ARGS,
)
CLIENT_ARGS: tuple[str, ...] = (
    *shlex.split(os.environ.get("PIPEGATE_E2E_CLIENT_ARGS", "")),
    *FAST_PATH_ARGS,
)

T = TypeVar("T")

#: Process groups alive right now; the conftest shows their logs when a test fails.
LIVE_GROUPS: list[ProcessGroup] = []


@contextlib.contextmanager
def tracked_group() -> Iterator[ProcessGroup]:
    """A :class:`ProcessGroup` whose processes' output is attached to failing tests."""
    with ProcessGroup() as group:
        LIVE_GROUPS.append(group)
        try:
            yield group
        finally:
            LIVE_GROUPS.remove(group)


#: sha256 of the origin's ``/bytes/<n>`` content, computed once per size.
expected_sha256 = functools.cache(pattern_sha256)


def new_token() -> str:
    return "e2e-" + secrets.token_urlsafe(18)


def sha256_of(chunks: Iterable[bytes]) -> tuple[int, str]:
    """Length and hex sha256 of a stream of chunks, without keeping them."""
    digest = hashlib.sha256()
    length = 0
    for chunk in chunks:
        digest.update(chunk)
        length += len(chunk)
    return length, digest.hexdigest()


def download_across(url: str, during: Callable[[], None]) -> tuple[int, int, str]:
    """Stream a download from ``url``, call ``during`` once the first chunk arrived
    (e.g. to signal a process mid-transfer), then read the rest.

    Returns ``(status, length, sha256)`` of what arrived, so a test can prove that the
    event in the middle lost nothing.
    """
    with httpx.Client(timeout=30) as http, http.stream("GET", url) as response:
        chunks = response.iter_bytes()
        first = next(chunks, b"")
        during()
        length, digest = sha256_of(itertools.chain([first], chunks))
        return response.status_code, length, digest


def wait_until(
    probe: Callable[[], T | None], *, timeout: float, interval: float = 0.1, what: str
) -> T:
    """Call ``probe`` until it returns something other than ``None``; bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def probe_status(url: str, *, verify: bool | ssl.SSLContext = True, timeout: float = 3.0) -> int:
    """Status of a GET, or -1 when no HTTP answer came (refused, reset, timed out)."""
    try:
        return httpx.get(url, timeout=timeout, verify=verify).status_code
    except httpx.HTTPError:
        return -1


def wait_relaying(
    public_url: str,
    *,
    timeout: float = 20.0,
    verify: bool | ssl.SSLContext = True,
    process: ManagedProcess | None = None,
    ok: Sequence[int] = (200,),
) -> int:
    """Poll ``<public_url>/echo/ready`` until its status is in ``ok`` (fails early if
    ``process`` exits)."""
    last = [-1]

    def probe() -> int | None:
        if process is not None and process.poll() is not None:
            raise HarnessError(f"{process.name} exited early:\n{process.output()[-3000:]}")
        last[0] = probe_status(f"{public_url}/echo/ready", verify=verify)
        return last[0] if last[0] in ok else None

    try:
        return wait_until(probe, timeout=timeout, what=f"{public_url} to relay")
    except AssertionError as exc:
        tail = process.output()[-3000:] if process is not None else ""
        raise AssertionError(f"{exc} (last status {last[0]})\n{tail}") from None


def server_base(port: int, *, tls: bool = False) -> str:
    return f"{'https' if tls else 'http'}://127.0.0.1:{port}"


def ws_base(port: int, *, tls: bool = False) -> str:
    return f"{'wss' if tls else 'ws'}://127.0.0.1:{port}"


@dataclass
class Certificates:
    """A private CA made by trustme and a server certificate for 127.0.0.1/localhost."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


@dataclass
class TunnelFactory:
    """Starts servers, clients and whole tunnels in one process group, sharing the
    session's origin app; the group is closed when the test ends."""

    group: ProcessGroup
    origin_url: str
    token: str = field(default_factory=new_token)

    def server(
        self,
        *extra: str,
        port: int | None = None,
        token: str | None = None,
        certs: Certificates | None = None,
        defaults: bool = True,
    ) -> tuple[ManagedProcess, int]:
        """Start a server and wait for its health endpoint; returns it and its port."""
        port = port or free_port()
        flags = [*(SERVER_ARGS if defaults else FAST_PATH_ARGS), *extra]
        if certs is not None:
            flags += ["--ssl-keyfile", str(certs.key_file), "--ssl-certfile", str(certs.cert_file)]
        process = self.group.start("server", server_command(port, token or self.token, *flags))
        verify: bool | ssl.SSLContext = certs.client_context() if certs else True
        wait_for_port("127.0.0.1", port, timeout=20.0)
        deadline = time.monotonic() + 20.0
        while (
            probe_status(
                f"{server_base(port, tls=certs is not None)}/_pipegate/health", verify=verify
            )
            != 200
        ):
            if process.poll() is not None:
                raise HarnessError(f"server exited early:\n{process.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise HarnessError(f"server health never 200:\n{process.output()[-3000:]}")
            time.sleep(0.05)
        return process, port

    def client(
        self,
        server_ws_url: str,
        *extra: str,
        token: str | None = None,
        local_url: str | None = None,
        name: str = "client",
    ) -> ManagedProcess:
        """Start a client (does not wait for it)."""
        argv = client_command(
            local_url or self.origin_url,
            server_ws_url,
            token if token is not None else self.token,
            *CLIENT_ARGS,
            *extra,
        )
        return self.group.start(name, argv)

    def tunnel(
        self,
        connection_id: str = "node",
        *,
        server_args: Sequence[str] = (),
        client_args: Sequence[str] = (),
        certs: Certificates | None = None,
    ) -> Tunnel:
        """A whole new server + client in front of the shared origin, relaying."""
        server, port = self.server(*server_args, certs=certs)
        tls = certs is not None
        tunnel = Tunnel(
            server_base(port, tls=tls),
            connection_id,
            self.token,
            self.origin_url,
            server,
            None,
            None,
        )
        extra = [*client_args]
        if certs is not None:
            extra += ["--ca-file", str(certs.ca_file)]
        tunnel.client = self.client(tunnel.server_ws_url, *extra)
        verify: bool | ssl.SSLContext = certs.client_context() if certs else True
        wait_relaying(tunnel.public_url, verify=verify, process=tunnel.client)
        return tunnel
