"""Unit tests of the sans-I/O Connection, one or more per rule of docs/protocol.md.

Each test name starts with the rule id it checks. Hostile input is forged with
``encode()`` of hand-built messages, so the tests do not depend on a misbehaving peer.
"""

# The connection's state changes behind method calls, which mypy's narrowing of
# attributes and properties cannot see (it would call later asserts unreachable).
# mypy: disable-error-code="unreachable, comparison-overlap"

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pipegate_protocol import (
    CAPABILITY_WEBSOCKET,
    MAX_STREAM_ID,
    MAX_WINDOW,
    CloseCode,
    Connection,
    ConnectionState,
    ControlMessage,
    Data,
    DecodeError,
    FlowControlError,
    FrameTooLargeError,
    GoAway,
    GoAwayReason,
    Hello,
    Limits,
    LocalProtocolError,
    Message,
    Open,
    Ping,
    Pong,
    ProtocolError,
    ProtocolVersion,
    RemoteProtocolError,
    Reset,
    ResetCode,
    Response,
    Role,
    StreamKind,
    StreamLimitError,
    StreamStateError,
    VersionMismatchError,
    WebSocketClose,
    WebSocketData,
    WindowUpdate,
    decode,
    encode,
)

# ---------------------------------------------------------------- helpers


def transfer(source: Connection, target: Connection) -> list[Message | None]:
    """Deliver everything ``source`` queued to ``target``; return what target saw."""
    return [target.receive(payload) for payload in source.data_to_send()]


def pair(
    *,
    server_limits: Limits | None = None,
    client_limits: Limits | None = None,
    client_capabilities: Sequence[str] = (CAPABILITY_WEBSOCKET,),
) -> tuple[Connection, Connection]:
    """A server and a client Connection that have exchanged hellos."""
    server = Connection(
        Role.SERVER,
        limits=server_limits,
        connection_id="node",
        public_url="https://example.com/node",
        agent="test-server",
    )
    client = Connection(Role.CLIENT, limits=client_limits, capabilities=client_capabilities)
    transfer(server, client)
    transfer(client, server)
    assert server.state is client.state is ConnectionState.OPEN
    return server, client


def wire(message: ControlMessage) -> str:
    """The text WebSocket message carrying ``message``."""
    encoded = encode(message)
    assert isinstance(encoded, str)
    return encoded


def hello_from(role: Role, **fields: Any) -> str:
    """A forged hello of ``role``."""
    return wire(Hello(version=ProtocolVersion.V1, role=role, **fields))


def client_awaiting_hello(**limits: int) -> Connection:
    client = Connection(Role.CLIENT, limits=Limits(**limits), capabilities=[CAPABILITY_WEBSOCKET])
    client.data_to_send()
    return client


def client_with_server_hello(**limits: int) -> Connection:
    """A client that received a server hello; feed it forged server messages."""
    client = client_awaiting_hello(**limits)
    client.receive(hello_from(Role.SERVER))
    client.data_to_send()
    return client


def server_with_client_hello(**limits: int) -> Connection:
    """A server that received a client hello (with the websocket capability)."""
    server = Connection(Role.SERVER)
    server.data_to_send()
    server.receive(
        hello_from(Role.CLIENT, limits=Limits(**limits), capabilities=(CAPABILITY_WEBSOCKET,))
    )
    return server


def open_http(server: Connection, client: Connection, *, end_stream: bool = False) -> int:
    stream_id = server.open_stream(method="GET", path="/", end_stream=end_stream)
    (opened,) = transfer(server, client)
    assert isinstance(opened, Open)
    return stream_id


def open_websocket(server: Connection, client: Connection, *, end_stream: bool = True) -> int:
    stream_id = server.open_stream(
        method="GET", path="/ws", kind=StreamKind.WEBSOCKET, end_stream=end_stream
    )
    transfer(server, client)
    client.send_response(stream_id, 101, [("sec-websocket-protocol", "chat")])
    (accepted,) = transfer(client, server)
    assert isinstance(accepted, Response)
    assert accepted.status == 101
    return stream_id


def open_msg(stream_id: int, **fields: Any) -> str:
    return wire(Open(stream_id=stream_id, method="GET", path="/", **fields))


# ---------------------------------------------------------------- HS-4..HS-6, HS-11, HS-12


def test_HS_4_hello_is_the_first_queued_message() -> None:
    server = Connection(Role.SERVER, connection_id="node", public_url="https://h/node")
    (first,) = server.data_to_send()
    hello = decode(first)
    assert isinstance(hello, Hello)
    assert hello.role is Role.SERVER
    assert hello.version is ProtocolVersion.V1
    assert server.data_to_send() == []


def test_HS_4_hellos_are_sent_without_waiting_for_the_peer() -> None:
    server = Connection(Role.SERVER)
    client = Connection(Role.CLIENT)
    server_out, client_out = server.data_to_send(), client.data_to_send()
    assert isinstance(client.receive(server_out[0]), Hello)
    assert isinstance(server.receive(client_out[0]), Hello)
    assert server.state is client.state is ConnectionState.OPEN


@pytest.mark.parametrize(
    "payload",
    [
        encode(Ping(id=1)),
        encode(Pong(id=1)),
        open_msg(1),
        encode(WindowUpdate(stream_id=1, increment=1)),
        encode(GoAway(last_stream_id=0)),
        encode(Data(1, b"x")),
        encode(WebSocketData(1, b"x", text=True)),
    ],
)
def test_HS_4_message_before_hello_is_a_protocol_error(payload: str | bytes) -> None:
    client = client_awaiting_hello()
    with pytest.raises(StreamStateError, match="expected hello") as info:
        client.receive(payload)
    assert info.value.close_code is CloseCode.PROTOCOL_ERROR
    assert client.state is ConnectionState.CLOSED


def test_HS_4_second_hello_is_a_protocol_error() -> None:
    client = client_with_server_hello()
    with pytest.raises(StreamStateError, match="second hello"):
        client.receive(hello_from(Role.SERVER))


def test_HS_4_server_cannot_open_before_the_client_hello() -> None:
    server = Connection(Role.SERVER)
    assert not server.can_open_stream
    with pytest.raises(LocalProtocolError):
        server.open_stream(method="GET", path="/")
    with pytest.raises(LocalProtocolError):
        _ = server.peer_limits
    with pytest.raises(LocalProtocolError):
        _ = server.max_data_size


def test_HS_5_limits_travel_in_the_hello() -> None:
    server, client = pair(
        server_limits=Limits(max_frame_size=32768, initial_window=1000, max_concurrent_streams=7),
        client_limits=Limits(max_frame_size=65536, initial_window=2000, max_concurrent_streams=9),
    )
    assert server.peer_limits == client.local_limits
    assert client.peer_limits == server.local_limits
    assert server.max_data_size == 65536
    assert client.max_data_size == 32768


def test_HS_5_limits_out_of_range_are_rejected() -> None:
    with pytest.raises(ValueError, match="max_frame_size"):
        Limits(max_frame_size=16383)
    with pytest.raises(ValueError, match="initial_window"):
        Limits(initial_window=MAX_WINDOW + 1)
    with pytest.raises(ValueError, match="max_concurrent_streams"):
        Limits(max_concurrent_streams=0)


def test_HS_6_hello_with_unknown_version_is_a_version_mismatch() -> None:
    client = client_awaiting_hello()
    forged = json.dumps({"type": "hello", "version": "pipegate.v2", "role": "server"})
    with pytest.raises(VersionMismatchError) as info:
        client.receive(forged)
    assert info.value.close_code is CloseCode.VERSION_MISMATCH
    assert int(info.value.close_code) == 4003
    assert client.state is ConnectionState.CLOSED


def test_HS_6_hello_with_malformed_version_is_a_decode_error() -> None:
    client = client_awaiting_hello()
    with pytest.raises(DecodeError):
        client.receive(json.dumps({"type": "hello", "version": 1, "role": "server"}))


def test_HS_6_hello_with_known_version_and_other_errors_is_a_decode_error() -> None:
    client = client_awaiting_hello()
    forged = json.dumps({"type": "hello", "version": "pipegate.v1", "role": "nobody"})
    with pytest.raises(DecodeError):
        client.receive(forged)


@pytest.mark.parametrize("role", [Role.SERVER, Role.CLIENT])
def test_HS_6_hello_with_our_own_role_is_a_protocol_error(role: Role) -> None:
    conn = Connection(role)
    with pytest.raises(StreamStateError, match="role") as info:
        conn.receive(hello_from(role))
    assert info.value.close_code is CloseCode.PROTOCOL_ERROR


def test_HS_11_capabilities_and_unknown_ones() -> None:
    server, _ = pair(client_capabilities=("future-thing", CAPABILITY_WEBSOCKET))
    assert server.peer_supports_websocket
    server, _ = pair(client_capabilities=("future-thing",))
    assert not server.peer_supports_websocket
    assert CAPABILITY_WEBSOCKET == "websocket"


def test_HS_12_server_hello_carries_connection_id_and_public_url() -> None:
    server, client = pair()
    assert client.peer_hello is not None
    assert client.peer_hello.connection_id == "node"
    assert client.peer_hello.public_url == "https://example.com/node"
    assert server.peer_hello is not None
    assert server.peer_hello.connection_id is None


# ---------------------------------------------------------------- FR-5 / FR-6


def test_FR_5_oversize_data_frame_is_frame_too_large() -> None:
    client = client_with_server_hello(max_frame_size=16384)
    client.receive(open_msg(1))
    client.receive(encode(Data(1, b"x" * 16384)))  # exactly the limit is fine
    with pytest.raises(FrameTooLargeError) as info:
        client.receive(encode(Data(1, b"x" * 16385)))
    assert info.value.close_code is CloseCode.MESSAGE_TOO_BIG
    assert int(info.value.close_code) == 1009
    assert client.state is ConnectionState.CLOSED


def test_FR_5_oversize_control_message_is_frame_too_large_even_before_hello() -> None:
    client = client_awaiting_hello(max_frame_size=16384)
    huge = hello_from(Role.SERVER, agent="a" * 17000)
    with pytest.raises(FrameTooLargeError):
        client.receive(huge)


def test_FR_5_control_message_size_counts_utf8_bytes() -> None:
    client = client_with_server_hello(max_frame_size=16384)
    # 9000 characters, 18000+ bytes of UTF-8.
    forged = wire(Reset(stream_id=1, code=ResetCode.CANCELLED)).replace(
        '""', '"' + "é" * 9000 + '"'
    )
    assert len(forged) < 16384 < len(forged.encode("utf-8"))
    with pytest.raises(FrameTooLargeError):
        client.receive(forged)


def test_FR_5_sender_may_not_exceed_peer_max_frame_size() -> None:
    server, client = pair(client_limits=Limits(max_frame_size=16384))
    stream_id = open_http(server, client)
    with pytest.raises(LocalProtocolError, match="max_frame_size"):
        server.send_data(stream_id, b"x" * 16385)
    server.send_data(stream_id, b"x" * 16384)
    assert server.max_data_size == 16384


def test_FR_5_oversize_open_is_refused_locally_counting_utf8_bytes() -> None:
    server, _ = pair(client_limits=Limits(max_frame_size=16384))
    # 9000 characters of 0xE9 are 18000 bytes of UTF-8 on the wire.
    with pytest.raises(LocalProtocolError, match="max_frame_size"):
        server.open_stream(method="GET", path="/", headers=[("x-big", "\xe9" * 9000)])
    assert server.open_streams == 0
    assert server.data_to_send() == []
    # The failed open did not use up a stream id.
    assert server.open_stream(method="GET", path="/") == 1


def test_FR_6_malformed_input_closes_the_connection() -> None:
    client = client_with_server_hello()
    with pytest.raises(DecodeError):
        client.receive("{not json")
    assert client.state is ConnectionState.CLOSED
    with pytest.raises(LocalProtocolError, match="closed"):
        client.receive(encode(Ping(id=1)))


@pytest.mark.parametrize(
    "payload",
    [
        '{"type": "settings"}',
        "[]",
        b"\x05\x00\x00\x00\x01",
        b"\x00\x00\x00\x00\x00",
        b"\x00\x00",
    ],
)
def test_FR_6_FR_7_hostile_frames_are_decode_errors(payload: str | bytes) -> None:
    client = client_with_server_hello()
    client.receive(open_msg(1))
    with pytest.raises(DecodeError) as info:
        client.receive(payload)
    assert info.value.close_code is CloseCode.PROTOCOL_ERROR


# ---------------------------------------------------------------- ST-1 / ST-2


def test_ST_1_stream_ids_start_at_1_and_increase() -> None:
    server, client = pair()
    ids = [open_http(server, client, end_stream=True) for _ in range(3)]
    assert ids == [1, 2, 3]


@pytest.mark.parametrize("second_id", [1, 4])
def test_ST_1_open_with_a_non_increasing_id_is_a_protocol_error(second_id: int) -> None:
    client = client_with_server_hello()
    client.receive(open_msg(5, end_stream=True))
    with pytest.raises(StreamStateError, match="not above"):
        client.receive(open_msg(second_id))


def test_ST_1_ids_may_skip_but_only_the_server_opens() -> None:
    client = client_with_server_hello()
    assert isinstance(client.receive(open_msg(10)), Open)
    with pytest.raises(LocalProtocolError):
        client.open_stream(method="GET", path="/")
    server = server_with_client_hello()
    with pytest.raises(StreamStateError, match="only the server"):
        server.receive(open_msg(1))


def test_ST_1_no_stream_after_the_largest_id() -> None:
    client = client_with_server_hello()
    client.receive(open_msg(MAX_STREAM_ID, end_stream=True))
    with pytest.raises(DecodeError):  # MAX_STREAM_ID + 1 is not even a valid message
        client.receive(open_msg(1).replace('"stream_id":1', f'"stream_id":{MAX_STREAM_ID + 1}'))


def test_ST_2_HD_1_open_carries_the_raw_request_head() -> None:
    server, client = pair()
    stream_id = server.open_stream(
        method="PROPFIND",
        path="/a%2Fb/../c?",
        query="x=1&x=2&y=",
        headers=[("set-cookie", "a"), ("set-cookie", "b"), ("x-bin", "\xff\t")],
        scheme="https",
        client_host="203.0.113.7",
        client_port=51234,
        end_stream=True,
    )
    (opened,) = transfer(server, client)
    assert opened == Open(
        stream_id=stream_id,
        method="PROPFIND",
        path="/a%2Fb/../c?",
        query="x=1&x=2&y=",
        headers=(("set-cookie", "a"), ("set-cookie", "b"), ("x-bin", "\xff\t")),
        scheme="https",
        client_host="203.0.113.7",
        client_port=51234,
        end_stream=True,
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"method": "GE T", "path": "/"},
        {"method": "GET", "path": "relative"},
        {"method": "GET", "path": "/", "headers": [("x", "a\nb")]},
        {"method": "GET", "path": "/", "headers": [("x", "\u0100")]},
        {"method": "GET", "path": "/", "scheme": "ftp"},
        {"method": "GET", "path": "/", "client_port": 70000},
    ],
)
def test_ST_2_invalid_open_is_a_local_protocol_error(fields: dict[str, object]) -> None:
    server, _ = pair()
    with pytest.raises(LocalProtocolError, match="invalid Open"):
        server.open_stream(**fields)  # type: ignore[arg-type]
    assert server.open_streams == 0


def test_ST_2_open_with_end_stream_means_no_request_body() -> None:
    client = client_with_server_hello()
    client.receive(open_msg(1, end_stream=True))
    with pytest.raises(StreamStateError, match="after end of stream"):
        client.receive(encode(Data(1, b"body")))


# ---------------------------------------------------------------- ST-3


def test_ST_3_informational_responses_then_one_final_response() -> None:
    server, client = pair()
    stream_id = open_http(server, client, end_stream=True)
    client.send_response(stream_id, 100)
    client.send_response(stream_id, 103, [("link", "</a.css>; rel=preload")])
    client.send_response(stream_id, 200, [("content-type", "text/plain")])
    seen = transfer(client, server)
    assert [m.status for m in seen if isinstance(m, Response)] == [100, 103, 200]
    with pytest.raises(LocalProtocolError, match="already sent"):
        client.send_response(stream_id, 200)


def test_ST_3_second_final_response_is_a_protocol_error() -> None:
    server = server_with_client_hello()
    stream_id = server.open_stream(method="GET", path="/", end_stream=True)
    server.receive(encode(Response(stream_id=stream_id, status=200)))
    with pytest.raises(StreamStateError, match="second final response"):
        server.receive(encode(Response(stream_id=stream_id, status=500)))


def test_ST_3_informational_response_cannot_end_the_stream() -> None:
    server, client = pair()
    stream_id = open_http(server, client)
    with pytest.raises(LocalProtocolError, match="informational"):
        client.send_response(stream_id, 103, end_stream=True)
    with pytest.raises(StreamStateError, match="informational"):
        server.receive(encode(Response(stream_id=stream_id, status=103, end_stream=True)))


def test_ST_3_status_101_only_on_websocket_streams() -> None:
    server, client = pair()
    stream_id = open_http(server, client)
    with pytest.raises(LocalProtocolError, match="101"):
        client.send_response(stream_id, 101)
    with pytest.raises(StreamStateError, match="101"):
        server.receive(encode(Response(stream_id=stream_id, status=101)))


def test_ST_3_only_the_client_sends_responses() -> None:
    server, client = pair()
    stream_id = open_http(server, client)
    with pytest.raises(LocalProtocolError, match="only the client"):
        server.send_response(stream_id, 200)
    with pytest.raises(StreamStateError, match="only the client"):
        client.receive(encode(Response(stream_id=stream_id, status=200)))


@pytest.mark.parametrize("status", [99, 600, 0])
def test_ST_3_status_out_of_range_is_a_local_protocol_error(status: int) -> None:
    server, client = pair()
    stream_id = open_http(server, client)
    with pytest.raises(LocalProtocolError, match="invalid Response"):
        client.send_response(stream_id, status)


def test_ST_3_final_response_with_end_stream_means_no_body() -> None:
    server, client = pair()
    stream_id = open_http(server, client, end_stream=True)
    client.send_response(stream_id, 204, end_stream=True)
    transfer(client, server)
    assert not server.is_open(stream_id)
    assert not client.is_open(stream_id)
    with pytest.raises(LocalProtocolError):
        client.send_data(stream_id, b"")


def test_HD_3_HD_7_response_head_keeps_order_and_duplicates() -> None:
    server, client = pair()
    stream_id = open_http(server, client, end_stream=True)
    headers = [
        ("Set-Cookie", "a=1; Path=/"),
        ("content-type", "text/html"),
        ("set-cookie", "b=2"),
        ("X-Empty", ""),
        ("x-latin1", "caf\xe9"),
        ("set-cookie", "a=1; Path=/"),
    ]
    client.send_response(stream_id, 299, headers)
    (response,) = transfer(client, server)
    assert isinstance(response, Response)
    assert response.status == 299
    assert list(response.headers) == headers


def test_VE_5_agent_is_informational_only() -> None:
    """The agent string is carried for logs; it changes nothing in the exchange."""
    for agent in ("", "pipegate-client/0.0.1", "other-impl/9 (\u2603)"):
        server = Connection(Role.SERVER)
        client = Connection(Role.CLIENT, agent=agent)
        transfer(server, client)
        (hello,) = transfer(client, server)
        assert isinstance(hello, Hello)
        assert hello.agent == agent
        assert open_http(server, client) == 1


# ---------------------------------------------------------------- ST-4


def test_ST_4_server_respects_max_concurrent_streams() -> None:
    server, client = pair(client_limits=Limits(max_concurrent_streams=2))
    first = open_http(server, client, end_stream=True)
    open_http(server, client, end_stream=True)
    assert server.open_streams == client.open_streams == 2
    assert not server.can_open_stream
    with pytest.raises(LocalProtocolError, match="cannot open"):
        server.open_stream(method="GET", path="/")
    client.send_response(first, 200, end_stream=True)
    transfer(client, server)
    assert server.can_open_stream
    assert open_http(server, client) == 3


def test_ST_4_too_many_streams_is_a_stream_limit_error() -> None:
    client = client_with_server_hello(max_concurrent_streams=2)
    client.receive(open_msg(1))
    client.receive(open_msg(2))
    with pytest.raises(StreamLimitError) as info:
        client.receive(open_msg(3))
    assert info.value.close_code is CloseCode.STREAM_LIMIT_EXCEEDED
    assert int(info.value.close_code) == 4002


def test_ST_4_finished_and_reset_streams_free_their_slot() -> None:
    client = client_with_server_hello(max_concurrent_streams=1)
    client.receive(open_msg(1, end_stream=True))
    client.send_response(1, 200, end_stream=True)
    client.receive(open_msg(2))
    client.reset_stream(2, ResetCode.UPSTREAM_FAILED)
    client.receive(open_msg(3))
    client.receive(encode(Reset(stream_id=3, code=ResetCode.CALLER_GONE)))
    assert isinstance(client.receive(open_msg(4)), Open)
    assert client.open_streams == 1


# ---------------------------------------------------------------- ST-5 / ST-10


def test_ST_5_half_close_response_before_request_body_ends() -> None:
    server, client = pair()
    stream_id = open_http(server, client)
    client.send_response(stream_id, 413, end_stream=True)
    transfer(client, server)
    assert server.is_open(stream_id)  # the request direction is still open
    assert client.is_open(stream_id)
    server.send_data(stream_id, b"more")
    server.send_data(stream_id, b"", end_stream=True)
    seen = transfer(server, client)
    assert seen == [Data(stream_id, b"more"), Data(stream_id, b"", end_stream=True)]
    assert not server.is_open(stream_id)
    assert not client.is_open(stream_id)
    assert server.open_streams == client.open_streams == 0


def test_ST_5_ST_10_stream_gone_only_when_both_directions_end() -> None:
    server, client = pair()
    stream_id = open_http(server, client)
    server.send_data(stream_id, b"req", end_stream=True)
    transfer(server, client)
    assert server.is_open(stream_id)
    client.send_response(stream_id, 200)
    client.send_data(stream_id, b"resp")
    transfer(client, server)
    assert server.is_open(stream_id)
    assert client.is_open(stream_id)
    client.send_data(stream_id, b"", end_stream=True)
    assert not client.is_open(stream_id)
    transfer(client, server)
    assert not server.is_open(stream_id)
    assert server.send_window(stream_id) == 0


def test_ST_5_sending_after_end_is_a_local_error() -> None:
    server, client = pair()
    stream_id = open_http(server, client)
    server.send_data(stream_id, b"x", end_stream=True)
    with pytest.raises(LocalProtocolError, match="after end of stream"):
        server.send_data(stream_id, b"y")


# ---------------------------------------------------------------- ST-6


@pytest.mark.parametrize(
    "forged",
    [
        encode(Data(2, b"x")),
        encode(WebSocketData(2, b"x", text=False)),
        encode(WindowUpdate(stream_id=2, increment=1)),
        encode(Reset(stream_id=2, code=ResetCode.CANCELLED)),
        encode(WebSocketClose(stream_id=2)),
        encode(Response(stream_id=2, status=200)),
    ],
)
def test_ST_6_frame_for_never_opened_stream_is_error(forged: str | bytes) -> None:
    server = server_with_client_hello()
    server.open_stream(method="GET", path="/")
    with pytest.raises(StreamStateError, match="never opened") as info:
        server.receive(forged)
    assert info.value.close_code is CloseCode.PROTOCOL_ERROR


@pytest.mark.parametrize(
    "forged",
    [
        encode(Data(1, b"x")),
        encode(WindowUpdate(stream_id=1, increment=1)),
        encode(Reset(stream_id=1, code=ResetCode.CANCELLED)),
        encode(WebSocketClose(stream_id=1)),
    ],
)
def test_ST_6_client_side_never_opened_stream_is_error(forged: str | bytes) -> None:
    client = client_with_server_hello()
    with pytest.raises(StreamStateError, match="never opened"):
        client.receive(forged)


# ---------------------------------------------------------------- ST-7 / ST-8


@pytest.mark.parametrize("code", list(ResetCode))
def test_ST_7_reset_ends_both_directions(code: ResetCode) -> None:
    server, client = pair()
    stream_id = open_http(server, client)
    server.reset_stream(stream_id, code, "why")
    assert not server.is_open(stream_id)
    (received,) = transfer(server, client)
    assert received == Reset(stream_id=stream_id, code=code, message="why")
    assert not client.is_open(stream_id)
    assert client.data_to_send() == []  # a reset is never answered with a reset


def test_ST_7_reset_codes() -> None:
    assert {c.value for c in ResetCode} == {
        "caller_gone",
        "upstream_failed",
        "timeout",
        "too_large",
        "refused",
        "cancelled",
        "internal_error",
    }


def test_ST_7_reset_of_a_gone_stream_is_a_no_op() -> None:
    server, client = pair()
    stream_id = open_http(server, client)
    server.reset_stream(stream_id, ResetCode.CALLER_GONE)
    server.data_to_send()
    server.reset_stream(stream_id, ResetCode.CALLER_GONE)
    server.reset_stream(99, ResetCode.CALLER_GONE)
    assert server.data_to_send() == []


def test_ST_7_reset_message_is_truncated() -> None:
    server, client = pair()
    stream_id = open_http(server, client)
    server.reset_stream(stream_id, ResetCode.INTERNAL_ERROR, "m" * 5000)
    (received,) = transfer(server, client)
    assert isinstance(received, Reset)
    assert len(received.message) == 1024


def test_ST_8_late_frames_on_a_reset_stream_are_ignored() -> None:
    server, client = pair()
    stream_id = open_http(server, client)
    client.send_response(stream_id, 200)
    client.send_data(stream_id, b"in flight")
    in_flight = client.data_to_send()
    server.reset_stream(stream_id, ResetCode.CALLER_GONE)
    assert len(server.data_to_send()) == 1
    for payload in in_flight:
        assert server.receive(payload) is None
    assert server.receive(encode(WindowUpdate(stream_id=stream_id, increment=10))) is None
    assert server.receive(encode(Reset(stream_id=stream_id, code=ResetCode.CANCELLED))) is None
    assert server.receive(encode(WebSocketClose(stream_id=stream_id))) is None
    assert server.receive(encode(WebSocketData(stream_id, b"x", text=True))) is None
    assert server.state is ConnectionState.OPEN
    assert server.data_to_send() == []


def test_ST_8_late_frames_after_the_stream_finished_are_ignored() -> None:
    server, client = pair()
    stream_id = open_http(server, client, end_stream=True)
    client.send_response(stream_id, 200, end_stream=True)
    transfer(client, server)
    assert client.receive(encode(WindowUpdate(stream_id=stream_id, increment=5))) is None
    assert client.receive(encode(Data(stream_id, b"late"))) is None
    assert client.receive(encode(Reset(stream_id=stream_id, code=ResetCode.CALLER_GONE))) is None
    assert client.state is ConnectionState.OPEN


def test_ST_8_sending_on_a_gone_stream_is_a_local_error() -> None:
    server, client = pair()
    stream_id = open_http(server, client)
    client.receive(encode(Reset(stream_id=stream_id, code=ResetCode.CALLER_GONE)))
    assert not client.is_open(stream_id)
    with pytest.raises(LocalProtocolError, match="not open"):
        client.send_response(stream_id, 200)
    with pytest.raises(LocalProtocolError, match="not open"):
        client.send_data(stream_id, b"x")


# ---------------------------------------------------------------- ST-9


def test_ST_9_data_before_response_is_error() -> None:
    server = server_with_client_hello()
    stream_id = server.open_stream(method="GET", path="/", end_stream=True)
    with pytest.raises(StreamStateError, match="before the response head"):
        server.receive(encode(Data(stream_id, b"x")))


def test_ST_9_data_before_own_head_is_a_local_error() -> None:
    server, client = pair()
    stream_id = open_http(server, client)
    with pytest.raises(LocalProtocolError, match="before the head"):
        client.send_data(stream_id, b"x")
    client.send_response(stream_id, 103)
    with pytest.raises(LocalProtocolError, match="before the head"):
        client.send_data(stream_id, b"x")


def test_ST_9_data_after_end_stream_is_error() -> None:
    server = server_with_client_hello()
    stream_id = server.open_stream(method="GET", path="/", end_stream=True)
    server.receive(encode(Response(stream_id=stream_id, status=200)))
    server.receive(encode(Data(stream_id, b"x", end_stream=True)))
    # The stream is gone for the server only if its own direction ended too: it did.
    assert not server.is_open(stream_id)
    server2 = server_with_client_hello()
    stream_id = server2.open_stream(method="POST", path="/")
    server2.receive(encode(Response(stream_id=stream_id, status=200, end_stream=True)))
    with pytest.raises(StreamStateError, match="after end of stream"):
        server2.receive(encode(Data(stream_id, b"x")))


def test_ST_9_data_after_end_stream_on_client_side_is_error() -> None:
    client = client_with_server_hello()
    client.receive(open_msg(1))
    client.receive(encode(Data(1, b"body", end_stream=True)))
    with pytest.raises(StreamStateError, match="after end of stream"):
        client.receive(encode(Data(1, b"more")))


def test_ST_9_websocket_frames_on_http_stream_are_errors() -> None:
    server = server_with_client_hello()
    stream_id = server.open_stream(method="GET", path="/", end_stream=True)
    server.receive(encode(Response(stream_id=stream_id, status=200)))
    with pytest.raises(StreamStateError, match="not an accepted websocket"):
        server.receive(encode(WebSocketData(stream_id, b"x", text=True)))
    server = server_with_client_hello()
    stream_id = server.open_stream(method="GET", path="/", end_stream=True)
    with pytest.raises(StreamStateError, match="non-websocket"):
        server.receive(encode(WebSocketClose(stream_id=stream_id)))


# ---------------------------------------------------------------- FC-*


def test_FC_2_initial_windows_come_from_the_receivers_hello() -> None:
    server, client = pair(
        server_limits=Limits(initial_window=3000), client_limits=Limits(initial_window=5000)
    )
    stream_id = open_http(server, client)
    assert server.send_window(stream_id) == 5000  # request body towards the client
    assert client.send_window(stream_id) == 3000  # response body towards the server
    assert server.send_window(999) == 0


def test_FC_1_only_data_payload_counts() -> None:
    server, client = pair(server_limits=Limits(initial_window=10))
    stream_id = open_http(server, client, end_stream=True)
    client.send_response(stream_id, 200, [("x", "y" * 100)])
    assert client.send_window(stream_id) == 10
    client.send_data(stream_id, b"12345")
    assert client.send_window(stream_id) == 5
    client.send_data(stream_id, b"")
    assert client.send_window(stream_id) == 5


def test_FC_3_FC_6_sending_past_the_window_is_a_local_error() -> None:
    server, client = pair(client_limits=Limits(initial_window=10))
    stream_id = open_http(server, client)
    with pytest.raises(LocalProtocolError, match="send window"):
        server.send_data(stream_id, b"x" * 11)
    server.send_data(stream_id, b"x" * 10)
    assert server.send_window(stream_id) == 0
    with pytest.raises(LocalProtocolError, match="send window"):
        server.send_data(stream_id, b"x")
    server.send_data(stream_id, b"", end_stream=True)  # empty frames need no credit


def test_FC_3_window_update_adds_credit() -> None:
    server, client = pair(client_limits=Limits(initial_window=10))
    stream_id = open_http(server, client)
    server.send_data(stream_id, b"x" * 10)
    received = transfer(server, client)
    assert received == [Data(stream_id, b"x" * 10)]
    client.acknowledge(stream_id, 10)
    (update,) = transfer(client, server)
    assert update == WindowUpdate(stream_id=stream_id, increment=10)
    assert server.send_window(stream_id) == 10


def test_FC_4_updates_are_batched_to_half_the_initial_window() -> None:
    server, client = pair(client_limits=Limits(initial_window=100))
    stream_id = open_http(server, client)
    server.send_data(stream_id, b"x" * 40)
    transfer(server, client)
    client.acknowledge(stream_id, 40)
    assert client.data_to_send() == []  # 40 < 50: held back
    server.send_data(stream_id, b"y" * 40)
    transfer(server, client)
    client.acknowledge(stream_id, 10)
    (update,) = transfer(client, server)
    assert update == WindowUpdate(stream_id=stream_id, increment=50)
    assert server.send_window(stream_id) == 20 + 50


def test_FC_4_exhausted_window_is_refilled_at_once() -> None:
    server, client = pair(client_limits=Limits(initial_window=100))
    stream_id = open_http(server, client)
    server.send_data(stream_id, b"x" * 100)
    transfer(server, client)
    client.acknowledge(stream_id, 1)
    (update,) = transfer(client, server)
    assert update == WindowUpdate(stream_id=stream_id, increment=1)


def test_FC_4_held_back_credit_is_returned_when_the_window_runs_out() -> None:
    server, client = pair(client_limits=Limits(initial_window=100))
    stream_id = open_http(server, client)
    server.send_data(stream_id, b"x" * 60)
    transfer(server, client)
    client.acknowledge(stream_id, 10)  # held back: 10 < 50
    assert client.data_to_send() == []
    server.send_data(stream_id, b"y" * 40)  # the window is now exhausted
    transfer(server, client)
    (update,) = transfer(client, server)  # without another acknowledge() call
    assert update == WindowUpdate(stream_id=stream_id, increment=10)
    assert server.send_window(stream_id) == 10


def test_FC_4_credit_only_for_consumed_bytes() -> None:
    server, client = pair(client_limits=Limits(initial_window=100))
    stream_id = open_http(server, client)
    server.send_data(stream_id, b"x" * 30)
    transfer(server, client)
    with pytest.raises(LocalProtocolError, match="acknowledging 31"):
        client.acknowledge(stream_id, 31)
    client.acknowledge(stream_id, 30)
    with pytest.raises(LocalProtocolError, match="acknowledging 1"):
        client.acknowledge(stream_id, 1)
    assert client.state is ConnectionState.OPEN


def test_FC_4_acknowledge_no_ops() -> None:
    server, client = pair(client_limits=Limits(initial_window=10))
    stream_id = open_http(server, client)
    server.send_data(stream_id, b"x" * 10, end_stream=True)
    transfer(server, client)
    client.acknowledge(stream_id, 10)  # the peer ended its direction: nothing to return
    client.acknowledge(stream_id, 0)
    client.acknowledge(12345, 10)  # unknown/gone stream
    assert client.data_to_send() == []


def test_FC_5_window_overflow_is_a_flow_control_error() -> None:
    server, client = pair(client_limits=Limits(initial_window=1000))
    stream_id = open_http(server, client)
    server.receive(encode(WindowUpdate(stream_id=stream_id, increment=MAX_WINDOW - 1000)))
    assert server.send_window(stream_id) == MAX_WINDOW
    with pytest.raises(FlowControlError) as info:
        server.receive(encode(WindowUpdate(stream_id=stream_id, increment=1)))
    assert info.value.close_code is CloseCode.FLOW_CONTROL_ERROR
    assert int(info.value.close_code) == 4001
    assert server.state is ConnectionState.CLOSED


def test_FC_6_data_past_the_window_is_a_flow_control_error() -> None:
    client = client_with_server_hello(initial_window=100)
    client.receive(open_msg(1))
    client.receive(encode(Data(1, b"x" * 60)))
    with pytest.raises(FlowControlError) as info:
        client.receive(encode(Data(1, b"x" * 41)))
    assert int(info.value.close_code) == 4001


def test_FC_6_websocket_data_is_flow_controlled_too() -> None:
    server, client = pair(client_limits=Limits(initial_window=100))
    stream_id = open_websocket(server, client)
    with pytest.raises(LocalProtocolError, match="send window"):
        server.send_websocket_data(stream_id, b"x" * 101, text=False)
    client2 = client_with_server_hello(initial_window=100)
    client2.receive(open_msg(1, kind="websocket", end_stream=True))
    client2.send_response(1, 101)
    client2.receive(encode(WebSocketData(1, b"x" * 100, text=False)))
    with pytest.raises(FlowControlError):
        client2.receive(encode(WebSocketData(1, b"x", text=False)))


def test_FC_7_window_update_after_own_direction_ended_is_harmless() -> None:
    server, client = pair()
    stream_id = open_http(server, client, end_stream=True)
    update = server.receive(encode(WindowUpdate(stream_id=stream_id, increment=7)))
    assert update == WindowUpdate(stream_id=stream_id, increment=7)
    assert server.state is ConnectionState.OPEN


# ---------------------------------------------------------------- WS-*


def test_WS_1_websocket_stream_needs_the_capability() -> None:
    server, _ = pair(client_capabilities=())
    with pytest.raises(LocalProtocolError, match="websocket"):
        server.open_stream(method="GET", path="/ws", kind=StreamKind.WEBSOCKET)
    client = Connection(Role.CLIENT)  # no capability advertised
    client.receive(hello_from(Role.SERVER))
    with pytest.raises(StreamStateError, match="capability"):
        client.receive(open_msg(1, kind="websocket"))


def test_WS_2_messages_and_fragments_relay_both_ways() -> None:
    server, client = pair()
    stream_id = open_websocket(server, client)
    server.send_websocket_data(stream_id, b"hel", text=True, fin=False)
    server.send_websocket_data(stream_id, b"lo", text=True, fin=True)
    assert transfer(server, client) == [
        WebSocketData(stream_id, b"hel", text=True, fin=False),
        WebSocketData(stream_id, b"lo", text=True, fin=True),
    ]
    client.send_websocket_data(stream_id, b"\x00\xff", text=False)
    client.send_websocket_data(stream_id, b"", text=False)
    assert transfer(client, server) == [
        WebSocketData(stream_id, b"\x00\xff", text=False, fin=True),
        WebSocketData(stream_id, b"", text=False, fin=True),
    ]


def test_WS_2_websocket_data_before_101_is_an_error() -> None:
    server, client = pair()
    stream_id = server.open_stream(
        method="GET", path="/ws", kind=StreamKind.WEBSOCKET, end_stream=True
    )
    transfer(server, client)
    with pytest.raises(LocalProtocolError, match="not an accepted websocket"):
        client.send_websocket_data(stream_id, b"x", text=True)
    with pytest.raises(StreamStateError, match="not an accepted websocket"):
        server.receive(encode(WebSocketData(stream_id, b"x", text=True)))


def test_WS_2_body_data_on_an_accepted_websocket_is_an_error() -> None:
    server, client = pair()
    stream_id = open_websocket(server, client, end_stream=False)
    with pytest.raises(LocalProtocolError, match="body data on websocket"):
        server.send_data(stream_id, b"x")
    with pytest.raises(StreamStateError, match="body data on websocket"):
        client.receive(encode(Data(stream_id, b"x")))


@pytest.mark.parametrize("open_end_stream", [True, False])
def test_WS_2_FC_4_websocket_windows_are_refilled(open_end_stream: bool) -> None:
    """Regression: with end_stream on the open, acknowledge() used to be a no-op."""
    server, client = pair(client_limits=Limits(initial_window=100))
    stream_id = open_websocket(server, client, end_stream=open_end_stream)
    for _ in range(5):  # five windows' worth: only possible if credit comes back
        server.send_websocket_data(stream_id, b"x" * 100, text=False)
        (received,) = transfer(server, client)
        assert isinstance(received, WebSocketData)
        client.acknowledge(stream_id, len(received.data))
        transfer(client, server)
        assert server.send_window(stream_id) == 100


def test_WS_3_websocket_open_always_ends_the_request_direction() -> None:
    server, client = pair()
    stream_id = server.open_stream(
        method="GET", path="/ws", kind=StreamKind.WEBSOCKET, end_stream=False
    )
    (opened,) = transfer(server, client)
    assert isinstance(opened, Open)
    assert opened.end_stream is True
    with pytest.raises(LocalProtocolError):
        server.send_data(stream_id, b"no request body on a websocket stream")


def test_WS_3_refusal_is_an_http_response_with_a_body() -> None:
    server, client = pair()
    stream_id = server.open_stream(
        method="GET", path="/ws", kind=StreamKind.WEBSOCKET, end_stream=True
    )
    transfer(server, client)
    client.send_response(stream_id, 403, [("content-type", "text/plain")])
    client.send_data(stream_id, b"forbidden", end_stream=True)
    seen = transfer(client, server)
    assert isinstance(seen[0], Response)
    assert seen[0].status == 403
    assert seen[1] == Data(stream_id, b"forbidden", end_stream=True)
    assert not server.is_open(stream_id)
    assert not client.is_open(stream_id)


def test_WS_3_101_with_end_stream_is_refused() -> None:
    server, client = pair()
    stream_id = server.open_stream(
        method="GET", path="/ws", kind=StreamKind.WEBSOCKET, end_stream=True
    )
    transfer(server, client)
    with pytest.raises(LocalProtocolError, match="101"):
        client.send_response(stream_id, 101, end_stream=True)
    with pytest.raises(StreamStateError, match="101"):
        server.receive(encode(Response(stream_id=stream_id, status=101, end_stream=True)))


def test_WS_3_accepted_websocket_carries_the_chosen_subprotocol() -> None:
    server, client = pair()
    stream_id = server.open_stream(
        method="GET",
        path="/ws",
        kind=StreamKind.WEBSOCKET,
        headers=[("sec-websocket-protocol", "chat, superchat")],
        end_stream=True,
    )
    (opened,) = transfer(server, client)
    assert isinstance(opened, Open)
    assert opened.kind is StreamKind.WEBSOCKET
    client.send_response(stream_id, 101, [("sec-websocket-protocol", "chat")])
    (accepted,) = transfer(client, server)
    assert accepted == Response(
        stream_id=stream_id, status=101, headers=(("sec-websocket-protocol", "chat"),)
    )


def test_WS_4_close_ends_the_stream_both_ways() -> None:
    server, client = pair()
    stream_id = open_websocket(server, client)
    client.send_websocket_close(stream_id, 4321, "bye")
    assert not client.is_open(stream_id)
    (closed,) = transfer(client, server)
    assert closed == WebSocketClose(stream_id=stream_id, code=4321, reason="bye")
    assert not server.is_open(stream_id)
    assert server.data_to_send() == []


def test_WS_4_simultaneous_closes_are_ignored() -> None:
    server, client = pair()
    stream_id = open_websocket(server, client)
    server.send_websocket_close(stream_id, 1000)
    client.send_websocket_close(stream_id, 1001)
    assert transfer(server, client) == [None]
    assert transfer(client, server) == [None]
    server.send_websocket_close(stream_id, 1000)  # gone: a no-op
    assert server.data_to_send() == []


def test_WS_4_close_reason_is_cut_to_123_utf8_bytes() -> None:
    server, client = pair()
    stream_id = open_websocket(server, client)
    server.send_websocket_close(stream_id, 1000, "é" * 100)  # 200 bytes
    (closed,) = transfer(server, client)
    assert isinstance(closed, WebSocketClose)
    assert closed.reason == "é" * 61
    assert len(closed.reason.encode("utf-8")) <= 123


def test_WS_4_close_code_range_and_http_streams() -> None:
    server, client = pair()
    stream_id = open_websocket(server, client)
    with pytest.raises(LocalProtocolError, match="invalid WebSocketClose"):
        server.send_websocket_close(stream_id, 999)
    http_id = open_http(server, client)
    with pytest.raises(LocalProtocolError, match="not an accepted websocket"):
        server.send_websocket_close(http_id, 1000)


def test_WS_4_reset_also_ends_a_websocket_stream() -> None:
    server, client = pair()
    stream_id = open_websocket(server, client)
    client.reset_stream(stream_id, ResetCode.UPSTREAM_FAILED)
    (reset,) = transfer(client, server)
    assert isinstance(reset, Reset)
    assert not server.is_open(stream_id)


# ---------------------------------------------------------------- LV-*


def test_LV_1_ping_is_answered_automatically() -> None:
    server, client = pair()
    client.send_ping(42)
    (ping,) = transfer(client, server)
    assert ping == Ping(id=42)
    (pong,) = transfer(server, client)
    assert pong == Pong(id=42)
    assert client.data_to_send() == []  # a pong is not answered


def test_LV_1_ping_ids_cover_the_range() -> None:
    server, client = pair()
    client.send_ping(0)
    client.send_ping(2**63 - 1)
    transfer(client, server)
    assert transfer(server, client) == [Pong(id=0), Pong(id=2**63 - 1)]
    with pytest.raises(LocalProtocolError, match="invalid Ping"):
        client.send_ping(-1)


def test_LV_4_server_goaway_stops_new_streams() -> None:
    server, client = pair()
    stream_id = open_http(server, client)
    server.send_goaway(GoAwayReason.SHUTDOWN, "restarting")
    server.send_goaway()  # idempotent
    assert not server.can_open_stream
    with pytest.raises(LocalProtocolError):
        server.open_stream(method="GET", path="/")
    (goaway,) = transfer(server, client)
    assert goaway == GoAway(last_stream_id=stream_id, message="restarting")
    assert client.goaway_received == goaway
    # In-flight streams finish normally.
    client.send_response(stream_id, 200, end_stream=True)
    server.send_data(stream_id, b"", end_stream=True)
    transfer(client, server)
    transfer(server, client)
    assert server.open_streams == client.open_streams == 0


def test_LV_4_open_after_the_servers_goaway_is_an_error() -> None:
    client = client_with_server_hello()
    client.receive(encode(GoAway(last_stream_id=0)))
    with pytest.raises(StreamStateError, match="go-away"):
        client.receive(open_msg(1))


def test_LV_4_client_goaway_refuses_streams_the_server_opened_too_late() -> None:
    server, client = pair()
    kept = open_http(server, client)
    late = server.open_stream(method="GET", path="/")  # in flight when the client leaves
    client.send_goaway()
    (goaway,) = transfer(client, server)
    assert goaway == GoAway(last_stream_id=kept)
    assert not server.can_open_stream
    assert transfer(server, client) == [None]  # refused, not given to the application
    assert not client.is_open(late)
    (refusal,) = transfer(client, server)
    assert refusal == Reset(stream_id=late, code=ResetCode.REFUSED)
    assert not server.is_open(late)
    assert client.is_open(kept)
    assert client.receive(encode(Data(late, b"late body"))) is None


def test_LV_4_goaway_reasons() -> None:
    assert {r.value for r in GoAwayReason} == {"shutdown", "token_revoked", "protocol_error"}


# ---------------------------------------------------------------- ER-*


def test_ER_1_remote_errors_close_the_connection_local_errors_do_not() -> None:
    server, client = pair()
    stream_id = open_http(server, client)
    with pytest.raises(LocalProtocolError):
        client.send_data(stream_id, b"x")  # before the response head
    assert client.state is ConnectionState.OPEN
    with pytest.raises(RemoteProtocolError):
        client.receive(encode(Data(stream_id + 5, b"x")))
    assert client.state is ConnectionState.CLOSED
    assert client.open_streams == 0
    with pytest.raises(LocalProtocolError, match="closed"):
        client.send_ping(1)


def test_ER_1_error_tree() -> None:
    for error in (
        DecodeError,
        FrameTooLargeError,
        StreamStateError,
        FlowControlError,
        StreamLimitError,
        VersionMismatchError,
    ):
        assert issubclass(error, RemoteProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)
    assert issubclass(LocalProtocolError, ProtocolError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    assert LocalProtocolError("x").close_code is CloseCode.INTERNAL_ERROR
    assert ProtocolError("x", close_code=CloseCode.POLICY_VIOLATION).close_code == 1008


def test_ER_2_close_codes() -> None:
    assert {c.name: int(c) for c in CloseCode} == {
        "NORMAL": 1000,
        "GOING_AWAY": 1001,
        "PROTOCOL_ERROR": 1002,
        "POLICY_VIOLATION": 1008,
        "MESSAGE_TOO_BIG": 1009,
        "INTERNAL_ERROR": 1011,
        "FLOW_CONTROL_ERROR": 4001,
        "STREAM_LIMIT_EXCEEDED": 4002,
        "VERSION_MISMATCH": 4003,
        "HELLO_TIMEOUT": 4004,
        "HEARTBEAT_TIMEOUT": 4005,
        "TOKEN_REVOKED": 4401,
        "REPLACED": 4409,
    }
    assert DecodeError.close_code == StreamStateError.close_code == 1002
    assert FrameTooLargeError.close_code == 1009
    assert FlowControlError.close_code == 4001
    assert StreamLimitError.close_code == 4002
    assert VersionMismatchError.close_code == 4003


@pytest.mark.parametrize(
    ("text", "fits_as_is"), [("short", True), ("x" * 123, True), ("x" * 124, False)]
)
def test_ER_3_reason_fits_a_close_frame(text: str, fits_as_is: bool) -> None:
    error = ProtocolError(text)
    assert len(error.reason.encode("utf-8")) <= 123
    assert (error.reason == text) is fits_as_is


def test_ER_3_reason_does_not_split_a_character() -> None:
    reason = ProtocolError("€" * 100).reason  # 3 bytes each
    assert reason.endswith("...")
    assert reason[:-3] == "€" * 40
    assert len(reason.encode("utf-8")) <= 123


def test_ER_4_a_reset_stream_does_not_affect_others() -> None:
    server, client = pair()
    first = open_http(server, client)
    second = open_http(server, client)
    server.reset_stream(first, ResetCode.CALLER_GONE)
    transfer(server, client)
    client.send_response(second, 200, end_stream=True)
    (response,) = transfer(client, server)
    assert isinstance(response, Response)
    assert server.is_open(second)
    assert server.state is client.state is ConnectionState.OPEN


# ---------------------------------------------------------------- hostile peers (ER-1)

_small_ids = st.integers(1, 4)
_hostile_messages = st.one_of(
    st.builds(
        Open,
        stream_id=_small_ids,
        method=st.just("GET"),
        path=st.just("/"),
        kind=st.sampled_from(StreamKind),
        end_stream=st.booleans(),
    ),
    st.builds(
        Response,
        stream_id=_small_ids,
        status=st.sampled_from([100, 101, 200, 204]),
        end_stream=st.booleans(),
    ),
    st.builds(WindowUpdate, stream_id=_small_ids, increment=st.integers(1, MAX_WINDOW)),
    st.builds(Reset, stream_id=_small_ids, code=st.sampled_from(ResetCode)),
    st.builds(WebSocketClose, stream_id=_small_ids),
    st.builds(Ping, id=st.integers(0, 10)),
    st.builds(Pong, id=st.integers(0, 10)),
    st.builds(GoAway, last_stream_id=st.integers(0, 4)),
    st.builds(Hello, version=st.just(ProtocolVersion.V1), role=st.sampled_from(Role)),
    st.builds(Data, stream_id=_small_ids, data=st.binary(max_size=300), end_stream=st.booleans()),
    st.builds(
        WebSocketData,
        stream_id=_small_ids,
        data=st.binary(max_size=300),
        text=st.booleans(),
        fin=st.booleans(),
    ),
)


@settings(max_examples=200)
@given(
    role=st.sampled_from(Role),
    sequence=st.lists(_hostile_messages, max_size=12),
    window=st.integers(1, 400),
)
def test_ER_1_any_message_sequence_is_accepted_or_a_remote_error(
    role: Role, sequence: list[Message], window: int
) -> None:
    """Whatever a hostile peer sends, receive() returns or raises RemoteProtocolError;
    after an error the connection is closed and nothing else leaks out."""
    conn = Connection(
        role,
        limits=Limits(initial_window=window, max_concurrent_streams=2),
        capabilities=[CAPABILITY_WEBSOCKET],
    )
    peer_role = Role.CLIENT if role is Role.SERVER else Role.SERVER
    conn.receive(hello_from(peer_role, capabilities=(CAPABILITY_WEBSOCKET,)))
    if role is Role.SERVER:
        for _ in range(2):
            conn.open_stream(method="GET", path="/")
    for message in sequence:
        error: RemoteProtocolError | None = None
        try:
            conn.receive(encode(message))
        except RemoteProtocolError as exc:
            error = exc
        if error is not None:
            assert conn.state is ConnectionState.CLOSED
            assert conn.open_streams == 0
            assert error.close_code in set(CloseCode)
            break
        assert conn.state is ConnectionState.OPEN
        assert conn.open_streams <= 2
        for out in conn.data_to_send():
            decode(out)  # whatever it answers (pongs, updates, refusals) is well formed


# ---------------------------------------------------------------- issue 15


def test_WS_6_a_fragment_of_another_kind_inside_a_message_is_a_protocol_error() -> None:
    server, client = pair()
    stream_id = open_websocket(server, client)
    client.receive(encode(WebSocketData(stream_id, b"he", text=True, fin=False)))
    with pytest.raises(StreamStateError, match="another kind"):
        client.receive(encode(WebSocketData(stream_id, b"llo", text=False, fin=True)))
    assert client.state is ConnectionState.CLOSED


def test_WS_6_kinds_may_change_between_messages_and_senders_cannot_mix_them() -> None:
    server, client = pair()
    stream_id = open_websocket(server, client)
    server.send_websocket_data(stream_id, b"a", text=True, fin=False)
    with pytest.raises(LocalProtocolError, match="WS-6"):
        server.send_websocket_data(stream_id, b"b", text=False)
    server.send_websocket_data(stream_id, b"b", text=True, fin=True)
    server.send_websocket_data(stream_id, b"\x00", text=False, fin=True)
    seen = transfer(server, client)
    assert [(m.text, m.fin) for m in seen if isinstance(m, WebSocketData)] == [
        (True, False),
        (True, True),
        (False, True),
    ]


def test_HS_6_unknown_version_wins_over_other_schema_errors() -> None:
    client = client_awaiting_hello()
    bad = json.dumps({"type": "hello", "version": "pipegate.v2", "role": "server", "limits": 7})
    with pytest.raises(VersionMismatchError):
        client.receive(bad)


def test_LV_1_ping_ids_above_2_53_are_echoed_exactly() -> None:
    client = client_with_server_hello()
    for ping_id in (2**53 + 1, 2**63 - 1, 9007199254740993):
        client.receive(f'{{"type":"ping","id":{ping_id}}}')
        (pong,) = client.data_to_send()
        assert isinstance(pong, str)
        assert f'"id":{ping_id}' in pong  # the digits, not a rounded float
