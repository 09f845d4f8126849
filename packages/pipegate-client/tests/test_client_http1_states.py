"""The HTTP/1.1 client's connection states and its translation of foreign failures.

The states are those of :class:`pipegate_client._http1.ConnectionState` (NEW, IDLE,
ACTIVE, CLOSED); the translation is the table in ``_http1_errors``: socket and TLS
exceptions become typed errors by type and errno, never by their message text.
"""

# mypy narrows ``connection.state`` at each assert and cannot see the calls between
# them change it (it would call the later asserts unreachable).
# mypy: disable-error-code="unreachable, comparison-overlap"

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
from typing import Any

import pytest
import trustme
from pipegate_client._http1 import ConnectionState, HTTP1Connection, HTTP1Pool, Origin
from pipegate_client._http1_errors import connect_error, describe_failure, lost_error
from pipegate_client.errors import (
    LocalAppError,
    LocalCertificateError,
    LocalConnectError,
    LocalConnectionLostError,
    LocalConnectTimeoutError,
    LocalNameError,
    LocalRefusedError,
    LocalResponseError,
    LocalTLSError,
)

from .test_client_http1 import (
    OK,
    WAIT,
    RawConnection,
    _tls_origin,
    keep_answering,
    pool_for,
    read_all,
    wait_until,
)

# ---------------------------------------------------------------------- states


async def test_http1_connection_states_over_one_exchange_and_close() -> None:
    """NEW until connected, IDLE between exchanges, ACTIVE while a response is
    awaited or read, CLOSED for good."""
    body_may_come = asyncio.Event()

    async def handler(connection: RawConnection, _index: int) -> None:
        while await connection.next_head() is not None:
            await connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n")
            await body_may_come.wait()
            await connection.send(b"ok")
            body_may_come.clear()

    async with pool_for(handler) as (_origin, pool):
        assert HTTP1Connection(pool).state is ConnectionState.NEW
        response = await pool.request("GET", "/", [])
        (connection,) = pool.connections
        assert connection.state is ConnectionState.ACTIVE
        assert pool.idle == []
        body_may_come.set()
        assert await read_all(response) == b"ok"
        assert connection.state is ConnectionState.IDLE
        assert pool.idle == [connection]
        assert connection.exchanges == 1

        body_may_come.set()
        response = await pool.request("GET", "/again", [])
        assert pool.connections == {connection}
        assert await read_all(response) == b"ok"
        assert connection.state is ConnectionState.IDLE
    assert connection.state is ConnectionState.CLOSED
    assert pool.connections == set()


async def test_http1_connection_closed_by_its_answer_goes_closed_not_idle() -> None:
    body_may_come = asyncio.Event()

    async def handler(connection: RawConnection, _index: int) -> None:
        await connection.next_head()
        await connection.send(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n")
        await body_may_come.wait()
        await connection.send(b"ok")
        await connection.wait_client_close()

    async with pool_for(handler) as (_origin, pool):
        response = await pool.request("GET", "/", [])
        (connection,) = pool.connections
        assert connection.state is ConnectionState.ACTIVE
        body_may_come.set()
        assert await read_all(response) == b"ok"
        assert connection.state is ConnectionState.CLOSED
        assert pool.idle == []
        assert pool.connections == set()


async def test_http1_idle_connection_closed_by_the_origin_goes_closed() -> None:
    async def handler(connection: RawConnection, _index: int) -> None:
        await connection.next_head()
        await connection.send(OK)
        connection.close()

    async with pool_for(handler) as (_origin, pool):
        response = await pool.request("GET", "/", [])
        (connection,) = pool.connections
        assert await read_all(response) == b"ok"
        await wait_until(lambda: connection.state is ConnectionState.CLOSED)
        assert pool.idle == []


async def test_http1_failed_connect_never_leaves_new(unused_port: int) -> None:
    pool = HTTP1Pool(
        Origin(f"http://127.0.0.1:{unused_port}"), max_connections=1, connect_timeout=WAIT
    )
    connection = HTTP1Connection(pool)
    try:
        with pytest.raises(LocalRefusedError):
            await connection.connect(pool.origin, None, WAIT)
        assert connection.state is ConnectionState.NEW
    finally:
        await pool.aclose()


# ---------------------------------------------------------------------- the table


def _ssl_error(mnemonic: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, "[SSL: SOMETHING ELSE] text that must not matter")
    exc.reason = mnemonic  # set by the ssl module on a real one
    return exc


def _verify_error(message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] text")
    exc.verify_message = message
    return exc


TABLE: list[tuple[OSError, type[LocalConnectError], str]] = [
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), LocalRefusedError,
     "connection refused"),
    # The errno decides, not the text.
    (OSError(errno.ECONNREFUSED, "a text saying something else"), LocalRefusedError,
     "connection refused"),
    (OSError(errno.EHOSTUNREACH, "connection refused, says the text"), LocalConnectError,
     os.strerror(errno.EHOSTUNREACH).lower()),
    (TimeoutError(), LocalConnectTimeoutError, "timed out"),
    (TimeoutError(errno.ETIMEDOUT, "Connection timed out"), LocalConnectTimeoutError,
     "timed out"),
    (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), LocalNameError,
     "name or service not known"),
    (socket.gaierror(-12345, "connection refused"), LocalNameError,
     "name resolution failed (code -12345)"),
    (_verify_error("unable to get local issuer certificate"), LocalCertificateError,
     "TLS certificate verification failed: unable to get local issuer certificate"),
    (_ssl_error("WRONG_VERSION_NUMBER"), LocalTLSError, "TLS failed: wrong version number"),
    (ssl.SSLError(1, "connection refused"), LocalTLSError, "TLS failed"),
    # No errno: the text is shown as it is, never searched for one.
    (OSError("Multiple exceptions: [Errno 111] Connect call failed"), LocalConnectError,
     "Multiple exceptions: [Errno 111] Connect call failed"),
]  # fmt: skip


@pytest.mark.parametrize(("foreign", "typed", "reason"), TABLE)
def test_http1_foreign_failures_translate_by_type_and_errno(
    foreign: OSError, typed: type[LocalConnectError], reason: str
) -> None:
    error = connect_error(foreign)
    assert type(error) is typed
    assert error.reason == reason
    assert error.__cause__ is foreign
    assert describe_failure(foreign) == reason

    lost = lost_error(foreign)
    assert type(lost) is LocalConnectionLostError
    assert isinstance(lost, LocalResponseError)
    assert lost.reason == reason
    assert lost.__cause__ is foreign


def test_http1_new_error_classes_sit_under_the_ones_callers_catch() -> None:
    for cls in (LocalRefusedError, LocalConnectTimeoutError, LocalNameError, LocalTLSError):
        assert issubclass(cls, LocalConnectError)
    assert issubclass(LocalCertificateError, LocalTLSError)
    assert issubclass(LocalConnectionLostError, LocalResponseError)


def test_http1_describe_failure_of_our_own_and_of_other_errors() -> None:
    assert describe_failure(LocalAppError("it said no")) == "it said no"
    assert describe_failure(ValueError("first line\nsecond")) == "first line"
    assert describe_failure(ValueError()) == "ValueError"


# ---------------------------------------------------------------------- at the boundary


async def connect_failure(url: str, connect_timeout: float = WAIT) -> LocalConnectError:
    """The error a GET to ``url`` fails with, through a pool of its own."""
    pool = HTTP1Pool(Origin(url), max_connections=1, connect_timeout=connect_timeout)
    try:
        with pytest.raises(LocalConnectError) as failed:
            await pool.request("GET", "/", [])
        assert pool.connections == set()
        return failed.value
    finally:
        await pool.aclose()


def _resolve_to(monkeypatch: pytest.MonkeyPatch, addresses: list[str]) -> None:
    """Make ``loop.getaddrinfo`` answer these IPv4 addresses, in order, for any name."""
    loop = asyncio.get_running_loop()

    async def getaddrinfo(host: str, port: int, **_kwargs: Any) -> list[Any]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in addresses
        ]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)


async def test_http1_refused_is_typed(unused_port: int) -> None:
    refused = await connect_failure(f"http://127.0.0.1:{unused_port}")
    assert type(refused) is LocalRefusedError
    assert refused.reason == "connection refused"
    assert isinstance(refused.__cause__, ConnectionRefusedError)


async def test_http1_name_whose_addresses_all_refuse_is_refused(
    monkeypatch: pytest.MonkeyPatch, unused_port: int
) -> None:
    """asyncio folds several addresses' failures into one OSError without an errno;
    the connection tries them itself, so the refusal keeps its type."""
    _resolve_to(monkeypatch, ["127.0.0.1", "127.0.0.2"])
    refused = await connect_failure(f"http://app.invalid:{unused_port}")
    assert type(refused) is LocalRefusedError
    assert refused.reason == "connection refused"


async def test_http1_name_connects_to_its_first_address_that_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with pool_for(keep_answering) as (origin, _pool):
        _resolve_to(monkeypatch, ["127.0.0.2", "127.0.0.1"])  # the origin is on .1 only
        pool = HTTP1Pool(
            Origin(f"http://app.invalid:{origin.port}"), max_connections=1, connect_timeout=WAIT
        )
        try:
            response = await pool.request("GET", "/", [])
            assert await read_all(response) == b"ok"
            head = origin.connections[0].heads[0]
            assert head.startswith(b"GET / HTTP/1.1\r\nHost: app.invalid:%d\r\n" % origin.port)
        finally:
            await pool.aclose()


async def test_http1_connect_timeout_is_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    async def never(*_args: Any, **_kwargs: Any) -> list[Any]:
        await asyncio.sleep(WAIT)
        return []

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", never)
    timed_out = await connect_failure("http://app.invalid:1", connect_timeout=0.05)
    assert type(timed_out) is LocalConnectTimeoutError
    assert timed_out.reason == "no connection within 0.05 s"


async def test_http1_unknown_ca_is_a_certificate_error() -> None:
    async with await _tls_origin(trustme.CA()) as origin:
        refused = await connect_failure(f"https://127.0.0.1:{origin.port}")
    assert type(refused) is LocalCertificateError
    assert isinstance(refused.__cause__, ssl.SSLCertVerificationError)
    assert refused.reason.startswith("TLS certificate verification failed: ")
