"""Fixtures for the end-to-end tests and the abuse suite below them
(``tests/e2e/abuse``): real ``pipegate-server``, ``pipegate-client`` and origin
processes on loopback ports, reached only through the public URL.

Starting processes is the slow part, so the suite shares what it can:

* ``origin`` — one origin app (:mod:`pipegate_conformance.origin`) for the session.
* ``tunnel`` — one server + client in front of it (connection id ``e2e``), for every
  test that only sends traffic and leaves the processes alone.
* ``tunnels`` — a :class:`e2e_support.TunnelFactory` with its own process group, for
  tests that kill, freeze, signal or restart a process, or need special flags.
  Everything it started is stopped when the test ends, pass or fail.

Extra flags for every server and client the suite starts can be given in the
environment as ``PIPEGATE_E2E_SERVER_ARGS`` / ``PIPEGATE_E2E_CLIENT_ARGS`` (shell
syntax), e.g. to raise a body limit on another implementation, and
``PIPEGATE_E2E_NO_FAST_PATH=1`` adds ``--no-fast-path`` to both (public library APIs
only; see ``e2e_support.NO_FAST_PATH``).
"""

from __future__ import annotations

import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import httpx
import pytest
import trustme
from pipegate_conformance.harness import (
    Tunnel,
    free_port,
    origin_command,
    start_tunnel,
    wait_for_http,
)

sys.path.insert(0, str(Path(__file__).parent))

from e2e_support import (
    CLIENT_ARGS,
    LIVE_GROUPS,
    NO_FAST_PATH,
    SERVER_ARGS,
    Certificates,
    TunnelFactory,
    new_token,
    tracked_group,
)


@pytest.fixture(scope="session")
def origin() -> Iterator[str]:
    """URL of the session's origin app."""
    with tracked_group() as group:
        port = free_port()
        process = group.start("origin", origin_command(port))
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/echo/ready", process=process)
        yield url


@pytest.fixture(scope="session")
def tunnel(origin: str) -> Iterator[Tunnel]:
    """The shared tunnel: connection id ``e2e``; do not kill or signal its processes."""
    with tracked_group() as group:
        yield start_tunnel(
            group,
            token=new_token(),
            connection_id="e2e",
            origin_url=origin,
            server_args=SERVER_ARGS,
            client_args=CLIENT_ARGS,
        )


@pytest.fixture
def tunnels(origin: str) -> Iterator[TunnelFactory]:
    """A factory for processes this test may disturb; all stopped at teardown."""
    with tracked_group() as group:
        yield TunnelFactory(group, origin)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(30.0)) as client:
        yield client


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    folder = tmp_path_factory.mktemp("tls")
    paths = Certificates(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    ca.cert_pem.write_to_path(str(paths.ca_file))
    leaf.cert_chain_pems[0].write_to_path(str(paths.cert_file))
    for extra in leaf.cert_chain_pems[1:]:
        extra.write_to_path(str(paths.cert_file), append=True)
    leaf.private_key_pem.write_to_path(str(paths.key_file))
    return paths


#: Tests of what only the fast path does, by file and name, with why; skipped (and
#: listed as skipped) when the suite runs with ``PIPEGATE_E2E_NO_FAST_PATH=1``.
FAST_PATH_ONLY = {
    ("test_e2e_hardening.py", "test_idle_callers_are_disconnected"): (
        "the request-head deadline (--head-timeout) is part of the fast path's HTTP "
        "protocol; uvicorn's own protocols have none"
    ),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not NO_FAST_PATH:
        return
    for item in items:
        reason = FAST_PATH_ONLY.get((item.path.name, getattr(item, "originalname", item.name)))
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"--no-fast-path: {reason}"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """On failure, attach the tail of every live process's output to the report."""
    report = yield
    if report.failed:
        for group in LIVE_GROUPS:
            for process in group.processes:
                report.sections.append(
                    (f"{process.name} pid {process.pid} output (tail)", process.output()[-4000:])
                )
    return report
