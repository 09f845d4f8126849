"""The codec: every input decodes or raises DecodeError, and every message round-trips.

Rules: FR-1 (text = JSON control message), FR-2/FR-3 (data frame header), FR-4 (byte
strings as ISO-8859-1 characters), FR-6 (decode errors), FR-7 (stream id), VE-2/VE-4.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pipegate_protocol import (
    FRAME_HEADER_SIZE,
    KNOWN_VERSIONS,
    MAX_STREAM_ID,
    MAX_WINDOW,
    CloseCode,
    Data,
    DecodeError,
    GoAway,
    GoAwayReason,
    Hello,
    Limits,
    LocalProtocolError,
    Message,
    Open,
    Ping,
    Pong,
    Reset,
    ResetCode,
    Response,
    Role,
    StreamKind,
    WebSocketClose,
    WebSocketData,
    WindowUpdate,
    decode,
    encode,
)

# ---------------------------------------------------------------- strategies

TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: Every character a header value may hold (FR-4): TAB, visible ASCII and space, 0x80-0xFF.
VALUE_CHARS = (
    "\t" + "".join(chr(c) for c in range(0x20, 0x7F)) + "".join(chr(c) for c in range(0x80, 0x100))
)
PATH_CHARS = "".join(chr(c) for c in range(0x21, 0x7F)) + "".join(
    chr(c) for c in range(0x80, 0x100)
)

stream_ids = st.integers(min_value=1, max_value=MAX_STREAM_ID)
tokens = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=24)
header_names = st.one_of(
    st.sampled_from(["set-cookie", "Set-Cookie", "x-a", "content-type", "accept"]), tokens
)
header_values = st.one_of(
    st.just(""),
    st.just("\t"),
    st.text(alphabet=VALUE_CHARS, max_size=48),
    st.text(alphabet="".join(chr(c) for c in range(0x80, 0x100)), min_size=1, max_size=8),
)
#: Header lists with duplicate names likely (the name pool is small).
headers = st.lists(st.tuples(header_names, header_values), max_size=8).map(tuple)
paths = st.text(alphabet=PATH_CHARS, max_size=60).map(lambda rest: "/" + rest)
queries = st.text(alphabet=PATH_CHARS, max_size=60)
free_text = st.text(max_size=40)  # any Unicode except lone surrogates

limits = st.builds(
    Limits,
    max_frame_size=st.integers(16 * 1024, 16 * 1024 * 1024),
    initial_window=st.integers(1, MAX_WINDOW),
    max_concurrent_streams=st.integers(1, 65535),
)
hellos = st.builds(
    Hello,
    version=st.sampled_from(KNOWN_VERSIONS),
    role=st.sampled_from(Role),
    limits=limits,
    capabilities=st.lists(free_text, max_size=4).map(tuple),
    agent=free_text,
    connection_id=st.none() | free_text,
    public_url=st.none() | free_text,
)
opens = st.builds(
    Open,
    stream_id=stream_ids,
    kind=st.sampled_from(StreamKind),
    method=st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=64),
    path=paths,
    query=queries,
    headers=headers,
    scheme=st.sampled_from(["http", "https"]),
    client_host=st.none() | free_text,
    client_port=st.none() | st.integers(0, 65535),
    end_stream=st.booleans(),
)
responses = st.builds(
    Response,
    stream_id=stream_ids,
    status=st.integers(100, 599),
    headers=headers,
    end_stream=st.booleans(),
)
window_updates = st.builds(WindowUpdate, stream_id=stream_ids, increment=st.integers(1, MAX_WINDOW))
resets = st.builds(
    Reset,
    stream_id=stream_ids,
    code=st.sampled_from(ResetCode),
    message=st.text(max_size=1024),
)
ws_closes = st.builds(
    WebSocketClose,
    stream_id=stream_ids,
    code=st.integers(1000, 4999),
    reason=st.text(max_size=123),
)
pings = st.builds(Ping, id=st.integers(0, 2**63 - 1))
pongs = st.builds(Pong, id=st.integers(0, 2**63 - 1))
goaways = st.builds(
    GoAway,
    last_stream_id=st.integers(0, MAX_STREAM_ID),
    reason=st.sampled_from(GoAwayReason),
    message=st.text(max_size=1024),
)
datas = st.builds(
    Data, stream_id=stream_ids, data=st.binary(max_size=256), end_stream=st.booleans()
)
websocket_datas = st.builds(
    WebSocketData,
    stream_id=stream_ids,
    data=st.binary(max_size=256),
    text=st.booleans(),
    fin=st.booleans(),
)
control_messages = st.one_of(
    hellos, opens, responses, window_updates, resets, ws_closes, pings, pongs, goaways
)
messages: st.SearchStrategy[Message] = st.one_of(control_messages, datas, websocket_datas)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
MESSAGE_TYPES = [
    "hello",
    "open",
    "response",
    "window_update",
    "reset",
    "ws_close",
    "ping",
    "pong",
    "goaway",
]
FIELD_NAMES = [
    "stream_id",
    "version",
    "role",
    "limits",
    "method",
    "path",
    "query",
    "headers",
    "status",
    "increment",
    "code",
    "id",
    "last_stream_id",
    "end_stream",
    "kind",
]
#: JSON objects that look like control messages, with random member values.
message_like_objects = st.fixed_dictionaries(
    {"type": st.sampled_from(MESSAGE_TYPES) | st.text(max_size=8)},
    optional=dict.fromkeys(FIELD_NAMES, json_values),
)


def _decodes_or_raises_decode_error(payload: str | bytes) -> None:
    error: DecodeError | None = None
    try:
        result = decode(payload)
    except DecodeError as exc:
        error = exc
    if error is not None:
        assert error.close_code is CloseCode.PROTOCOL_ERROR
        assert str(error)
        return
    # Whatever decodes must encode back to something that decodes to the same message.
    assert decode(encode(result)) == result


# ---------------------------------------------------------------- FR-6 fuzzing


@given(st.text())
@example("")
@example("{}")
@example("[]")
@example("null")
@example('{"type": "ping", "id": 1}')
@example("\ud800")
@example("[" * 10_000 + "]" * 10_000)
@example('{"type":"hello","version":"pipegate.v1","role":"server","limits":' * 300)
def test_FR_6_any_text_decodes_or_raises_decode_error(payload: str) -> None:
    _decodes_or_raises_decode_error(payload)


@given(st.binary())
@example(b"")
@example(b"\x00\x00\x00\x00")
@example(b"\x80\x00\x00\x00\x01")
@example(b"\x7f\xff\xff\xff\xff")
def test_FR_6_any_bytes_decode_or_raise_decode_error(payload: bytes) -> None:
    _decodes_or_raises_decode_error(payload)


@given(message_like_objects)
def test_FR_6_message_like_json_decodes_or_raises_decode_error(obj: dict[str, Any]) -> None:
    _decodes_or_raises_decode_error(json.dumps(obj))


@given(control_messages, st.data())
def test_FR_6_corrupted_valid_messages_decode_or_raise_decode_error(
    message: Message, data: st.DataObject
) -> None:
    obj = json.loads(encode(message))
    field = data.draw(st.sampled_from(sorted(obj)))
    obj[field] = data.draw(json_values)
    _decodes_or_raises_decode_error(json.dumps(obj))
    text = encode(message)
    assert isinstance(text, str)
    cut = data.draw(st.integers(0, len(text)))
    _decodes_or_raises_decode_error(text[:cut])


# ---------------------------------------------------------------- round trips


@settings(max_examples=300)
@given(messages)
def test_FR_1_FR_2_every_message_round_trips(message: Message) -> None:
    encoded = encode(message)
    if isinstance(message, Data | WebSocketData):
        assert isinstance(encoded, bytes)
        assert len(encoded) == FRAME_HEADER_SIZE + len(message.data)
    else:
        assert isinstance(encoded, str)
        assert json.loads(encoded)["type"] == message.type
    assert decode(encoded) == message


@pytest.mark.parametrize(
    "strategy",
    [hellos, opens, responses, window_updates, resets, ws_closes, pings, pongs, goaways],
    ids=MESSAGE_TYPES,
)
@settings(max_examples=30)
@given(data=st.data())
def test_FR_1_round_trip_per_message_kind(strategy: Any, data: st.DataObject) -> None:
    message = data.draw(strategy)
    assert decode(encode(message)) == message


@given(headers)
def test_FR_4_HD_2_header_bytes_survive_latin1(pairs: tuple[tuple[str, str], ...]) -> None:
    """Every header byte (0x80-0xFF, tabs, empty values, duplicates) survives in order."""
    message = Response(stream_id=1, status=200, headers=pairs)
    decoded = decode(encode(message))
    assert isinstance(decoded, Response)
    assert [(n.encode("latin-1"), v.encode("latin-1")) for n, v in decoded.headers] == [
        (n.encode("latin-1"), v.encode("latin-1")) for n, v in pairs
    ]


def test_FR_4_raw_http_bytes_round_trip_through_latin1() -> None:
    raw_value = bytes(range(0x80, 0x100)) + b"\tend "
    raw_path = b"/caf\xc3\xa9/%2F/../a//b/"
    raw_query = b"a=1&a=2&b=&c=%26&\xff"
    message = Open(
        stream_id=1,
        method="PROPFIND",
        path=raw_path.decode("latin-1"),
        query=raw_query.decode("latin-1"),
        headers=(("x-raw", raw_value.decode("latin-1")), ("x-empty", "")),
    )
    decoded = decode(encode(message))
    assert isinstance(decoded, Open)
    assert decoded.path.encode("latin-1") == raw_path
    assert decoded.query.encode("latin-1") == raw_query
    assert decoded.headers[0][1].encode("latin-1") == raw_value
    assert decoded.headers[1] == ("x-empty", "")


def test_FR_4_escaped_and_raw_utf8_json_mean_the_same_byte() -> None:
    escaped = '{"type":"response","stream_id":1,"status":200,"headers":[["x","\\u00e9"]]}'
    raw = '{"type":"response","stream_id":1,"status":200,"headers":[["x","\u00e9"]]}'
    assert decode(escaped) == decode(raw)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("headers", [["x", "\u0100"]]),  # above U+00FF
        ("headers", [["x", "a\nb"]]),  # LF
        ("headers", [["x", "a\rb"]]),  # CR
        ("headers", [["x", "a\n"]]),  # trailing LF ($ must not match before it)
        ("headers", [["x\n", "a"]]),
        ("headers", [["x", "\x00"]]),  # NUL
        ("headers", [["x", "\x7f"]]),  # DEL
        ("headers", [["", "v"]]),  # empty name
        ("headers", [["bad name", "v"]]),  # space in a name
        ("headers", [["x:y", "v"]]),  # colon in a name
        ("headers", [["x", "v", "extra"]]),  # not a pair
        ("path", "relative"),
        ("path", "/with space"),
        ("path", "/a\n"),
        ("query", "a=1\n"),
        ("method", "GET\n"),
        ("path", "/\u0100"),
        ("path", ""),
        ("query", "a b"),
        ("query", "\n"),
        ("method", "GE T"),
        ("method", ""),
        ("method", "X" * 65),
    ],
)
def test_FR_4_out_of_range_characters_are_decode_errors(field: str, value: object) -> None:
    obj: dict[str, object] = {"type": "open", "stream_id": 1, "method": "GET", "path": "/"}
    obj[field] = value
    with pytest.raises(DecodeError):
        decode(json.dumps(obj))


# ---------------------------------------------------------------- FR-1 / FR-6 units


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "not json",
        "{",
        '{"type": "ping", "id": 1',
        "[]",
        '["ping", 1]',
        "42",
        '"ping"',
        "null",
        "{}",
        '{"id": 1}',
        '{"type": "nope"}',
        '{"type": "PING", "id": 1}',
        '{"type": null, "id": 1}',
        '{"type": "ping"}',
        '{"type": "ping", "id": -1}',
        '{"type": "ping", "id": 9223372036854775808}',
        '{"type": "window_update", "stream_id": 1, "increment": 0}',
        '{"type": "window_update", "stream_id": 0, "increment": 1}',
        '{"type": "window_update", "stream_id": 2147483648, "increment": 1}',
        '{"type": "window_update", "stream_id": 1, "increment": 2147483648}',
        '{"type": "response", "stream_id": 1, "status": 99}',
        '{"type": "response", "stream_id": 1, "status": 600}',
        '{"type": "reset", "stream_id": 1, "code": "bogus"}',
        '{"type": "goaway", "last_stream_id": 0, "reason": "bogus"}',
        '{"type": "ws_close", "stream_id": 1, "code": 999}',
        '{"type": "ws_close", "stream_id": 1, "code": 5000}',
        '{"type": "open", "stream_id": 1, "method": "GET", "path": "/", "kind": "tcp"}',
        '{"type": "open", "stream_id": 1, "method": "GET", "path": "/", "scheme": "ftp"}',
        '{"type": "hello", "version": "pipegate.v1", "role": "proxy"}',
        '{"type": "hello", "version": "pipegate.v1", "role": "client", '
        '"limits": {"max_frame_size": 1024}}',
        '{"type": "hello", "version": "pipegate.v1", "role": "client", '
        '"limits": {"initial_window": 0}}',
        '{"type": "hello", "version": "pipegate.v1", "role": "client", '
        '"limits": {"max_concurrent_streams": 0}}',
    ],
)
def test_FR_6_malformed_control_messages_raise_decode_error(payload: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode(payload)
    assert info.value.close_code is CloseCode.PROTOCOL_ERROR
    assert int(info.value.close_code) == 1002


@pytest.mark.parametrize(
    "payload",
    [
        '{"type": "window_update", "stream_id": "1", "increment": 5}',
        '{"type": "window_update", "stream_id": 1.0, "increment": 5}',
        '{"type": "window_update", "stream_id": true, "increment": 5}',
        '{"type": "response", "stream_id": 1, "status": 200, "end_stream": "true"}',
        '{"type": "response", "stream_id": 1, "status": 200, "end_stream": 1}',
        '{"type": "response", "stream_id": 1, "status": "200"}',
        '{"type": "hello", "version": "pipegate.v1", "role": "client", "capabilities": "ab"}',
    ],
)
def test_FR_1_members_must_have_their_json_type(payload: str) -> None:
    with pytest.raises(DecodeError):
        decode(payload)


def test_VE_2_unknown_members_are_ignored() -> None:
    decoded = decode(
        '{"type": "hello", "version": "pipegate.v1", "role": "server", "future": [1, 2],'
        ' "limits": {"max_frame_size": 65536, "later": true}}'
    )
    assert isinstance(decoded, Hello)
    assert decoded.limits.max_frame_size == 65536
    assert decoded.limits.initial_window == Limits().initial_window


def test_HS_5_missing_members_take_defaults() -> None:
    decoded = decode('{"type": "hello", "version": "pipegate.v1", "role": "client"}')
    assert isinstance(decoded, Hello)
    assert decoded.limits == Limits()
    assert decoded.limits.max_frame_size == 262144
    assert decoded.limits.initial_window == 1048576
    assert decoded.limits.max_concurrent_streams == 128
    assert decoded.capabilities == ()
    assert decoded.connection_id is None


def test_VE_4_unknown_type_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="type"):
        decode('{"type": "settings", "stream_id": 1}')


def test_decode_error_reason_fits_a_close_frame() -> None:
    with pytest.raises(DecodeError) as info:
        decode('{"type": "open", "stream_id": 1, "method": "GET", "path": "' + "x" * 500 + '"}')
    assert len(info.value.reason.encode("utf-8")) <= 123


# ---------------------------------------------------------------- FR-2 / FR-3 / FR-7


def test_FR_2_data_frame_header_layout() -> None:
    assert encode(Data(1, b"hello", end_stream=True)) == bytes.fromhex("80 00 00 00 01") + b"hello"
    assert encode(Data(1, b"ok")) == bytes.fromhex("00 00 00 00 01") + b"ok"
    assert encode(Data(1, b"", end_stream=True)) == bytes.fromhex("80 00 00 00 01")
    assert encode(Data(0x01020304, b"x")) == bytes.fromhex("00 01 02 03 04") + b"x"
    assert encode(Data(MAX_STREAM_ID, b"")) == bytes.fromhex("00 7f ff ff ff")


def test_FR_3_frame_kinds_and_fin_bit() -> None:
    hi = "00000003 6869"
    assert encode(WebSocketData(3, b"hi", text=True, fin=True)) == bytes.fromhex("81" + hi)
    assert encode(WebSocketData(3, b"hi", text=True, fin=False)) == bytes.fromhex("01" + hi)
    assert encode(WebSocketData(3, b"hi", text=False, fin=True)) == bytes.fromhex("82" + hi)
    assert encode(WebSocketData(3, b"hi", text=False, fin=False)) == bytes.fromhex("02" + hi)
    assert decode(bytes.fromhex("0000000007")) == Data(7, b"", end_stream=False)
    assert decode(bytes.fromhex("81 00000007 ff")) == WebSocketData(7, b"\xff", text=True, fin=True)
    assert decode(bytes.fromhex("02 00000007")) == WebSocketData(7, b"", text=False, fin=False)


@pytest.mark.parametrize("kind", [k for k in range(256) if k & 0x7F not in (0, 1, 2)])
def test_FR_3_unknown_frame_kind_is_a_decode_error(kind: int) -> None:
    with pytest.raises(DecodeError, match="kind"):
        decode(bytes([kind]) + b"\x00\x00\x00\x01payload")


@pytest.mark.parametrize("size", range(FRAME_HEADER_SIZE))
def test_FR_6_binary_shorter_than_header_is_a_decode_error(size: int) -> None:
    with pytest.raises(DecodeError):
        decode(b"\x80" * size)


@pytest.mark.parametrize("header", ["00 00000000", "80 00000000", "00 80000001", "01 ffffffff"])
def test_FR_7_stream_id_zero_or_reserved_bit_is_a_decode_error(header: str) -> None:
    with pytest.raises(DecodeError, match="stream id"):
        decode(bytes.fromhex(header) + b"data")


@pytest.mark.parametrize("stream_id", [0, -1, MAX_STREAM_ID + 1, 2**32])
def test_FR_7_encoding_a_frame_with_an_invalid_stream_id_is_a_local_error(stream_id: int) -> None:
    with pytest.raises(LocalProtocolError, match="stream id"):
        encode(Data(stream_id, b"x"))
    with pytest.raises(LocalProtocolError, match="stream id"):
        encode(WebSocketData(stream_id, b"x", text=True))


def test_FR_6_decode_accepts_bytearray_and_memoryview() -> None:
    frame = bytes.fromhex("80 00000001") + b"abc"
    assert decode(bytearray(frame)) == Data(1, b"abc", end_stream=True)  # type: ignore[arg-type]
    assert decode(memoryview(frame)) == Data(1, b"abc", end_stream=True)  # type: ignore[arg-type]


def test_FR_6_decode_rejects_other_types_with_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode(12345)  # type: ignore[arg-type]
    with pytest.raises(DecodeError):
        decode(None)  # type: ignore[arg-type]


def test_control_messages_are_frozen() -> None:
    ping = Ping(id=1)
    with pytest.raises(ValueError, match="frozen"):
        ping.id = 2  # type: ignore[misc]


# ---------------------------------------------------------------- issue 15: FR-8, FR-9, WS-4


@pytest.mark.parametrize("number", ["1.0", "1e2", "1E0", "-0.0", "100.00", "1e+0", "0.5"])
def test_FR_8_numbers_with_fraction_or_exponent_are_decode_errors(number: str) -> None:
    for text in (
        f'{{"type":"ping","id":{number}}}',
        f'{{"type":"window_update","stream_id":{number},"increment":1}}',
    ):
        with pytest.raises(DecodeError):
            decode(text)


def test_FR_8_minus_zero_is_zero_and_checked_against_the_range() -> None:
    assert decode('{"type":"ping","id":-0}') == Ping(id=0)
    with pytest.raises(DecodeError):
        decode('{"type":"window_update","stream_id":-0,"increment":1}')  # stream id 0


@pytest.mark.parametrize("ping_id", [2**53 - 1, 2**53, 2**53 + 1, 2**63 - 1])
def test_FR_8_big_integers_decode_and_encode_exactly(ping_id: int) -> None:
    text = f'{{"type":"ping","id":{ping_id}}}'
    ping = decode(text)
    assert isinstance(ping, Ping)
    assert ping.id == ping_id
    assert f'"id":{ping_id}' in str(encode(Pong(id=ping.id)))


def test_FR_8_ping_ids_above_the_range_are_decode_errors() -> None:
    with pytest.raises(DecodeError):
        decode(f'{{"type":"ping","id":{2**63}}}')


def test_FR_9_duplicate_member_names_keep_the_last_occurrence() -> None:
    assert decode('{"type":"ping","id":1,"id":2}') == Ping(id=2)
    hello = decode(
        '{"type":"hello","version":"pipegate.v1","role":"client",'
        '"limits":{"initial_window":5,"initial_window":7}}'
    )
    assert isinstance(hello, Hello)
    assert hello.limits.initial_window == 7


def test_WS_4_close_reason_counts_utf8_bytes_not_characters() -> None:
    fits = "é" * 61 + "x"  # 123 bytes
    assert decode(json.dumps({"type": "ws_close", "stream_id": 1, "reason": fits})) == (
        WebSocketClose(stream_id=1, reason=fits)
    )
    too_long = "é" * 62  # 62 characters, 124 bytes
    with pytest.raises(DecodeError, match="123 bytes"):
        decode(json.dumps({"type": "ws_close", "stream_id": 1, "reason": too_long}))
    with pytest.raises(DecodeError):
        decode(json.dumps({"type": "ws_close", "stream_id": 1, "reason": "x" * 124}))
