"""Fuzz a running server with random and mutated tunnel frames over real WebSockets.

A fixed number of seeded cases (reproducible: the case index names its connection id
and the seed is printed in failures). Each case opens an authenticated tunnel, takes
the server's hello, maybe sends a valid client hello, then one to four mutated
messages, and ends with a ping: the server must either answer the ping (it survived
and ignored or handled the junk) or close the tunnel with a proper close code, in
both cases promptly and without a traceback in anything it sent. Every batch of
cases also checks that the server process is alive, its health endpoint answers and
a bystander tunnel on the same server keeps relaying.
"""

from __future__ import annotations

import concurrent.futures
import json
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import quote

import httpx
import pytest
from e2e_support import TunnelFactory, tracked_group, wait_relaying
from pipegate_protocol import (
    CAPABILITY_WEBSOCKET,
    Connection,
    Data,
    DecodeError,
    GoAway,
    Open,
    Ping,
    Pong,
    ProtocolVersion,
    Reset,
    ResetCode,
    Response,
    Role,
    WebSocketClose,
    WebSocketData,
    WindowUpdate,
    decode,
    encode,
)
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

SEED = 20261125
CASES = 240
BATCH = 40
MAX_FRAME = 256 * 1024
PUBLIC_TIMEOUT = 10.0
#: Close codes a server may use to end a tunnel it does not like (RFC 6455 and the
#: PipeGate range). 1006 (no close frame) and 1011 (internal error) mean it crashed.
PROPER_CLOSE_CODES = {1000, 1001, 1002, 1003, 1007, 1008, 1009} | set(range(4000, 5000))
_PATH_SAFE = "-_.~!$&'()*+,;=:@"
LEAK_MARKERS = ("Traceback", 'File "', '.py", line')


@dataclass
class FuzzReport:
    outcomes: Counter[str] = field(default_factory=Counter)
    close_codes: Counter[int | None] = field(default_factory=Counter)
    leaks: list[str] = field(default_factory=list)
    improper: list[str] = field(default_factory=list)
    silent: list[str] = field(default_factory=list)
    health_failures: list[str] = field(default_factory=list)
    bystander_failures: list[str] = field(default_factory=list)
    public: Counter[str] = field(default_factory=Counter)
    server_exit: int | None = None
    server_log: str = ""


def _client_hello() -> str:
    hello = Connection(Role.CLIENT, capabilities=[CAPABILITY_WEBSOCKET]).data_to_send()[0]
    assert isinstance(hello, str)
    return hello


def _stream_id(rng: random.Random) -> int:
    return rng.choice([1, 2, 3, 7, 2**31 - 1, rng.randrange(1, 2**31)])


def _valid_message(rng: random.Random) -> str | bytes:
    sid = _stream_id(rng)
    choices: list[str | bytes] = [
        encode(Ping(id=rng.randrange(2**40))),
        encode(Pong(id=rng.randrange(2**40))),
        encode(WindowUpdate(stream_id=sid, increment=rng.randint(1, 2**20))),
        encode(Reset(stream_id=sid, code=rng.choice(list(ResetCode)), message="fuzz")),
        encode(Response(stream_id=sid, status=rng.randint(100, 599), headers=(("x-a", "b"),))),
        encode(Data(sid, rng.randbytes(rng.randint(0, 64)), end_stream=rng.random() < 0.5)),
        encode(
            WebSocketData(
                sid,
                rng.randbytes(rng.randint(0, 64)),
                text=rng.random() < 0.5,
                fin=rng.random() < 0.5,
            )
        ),
        encode(WebSocketClose(stream_id=sid, code=rng.choice([1000, 1001, 4000]))),
        encode(GoAway(last_stream_id=rng.randrange(0, 100))),
        encode(Open(stream_id=sid, method="GET", path="/x")),  # only servers open streams
        _client_hello(),  # a second hello
    ]
    return rng.choice(choices)


_ODD_VALUES: list[object] = [
    None,
    -1,
    0,
    2**64,
    1.5,
    "",
    "x" * 3000,
    [],
    {},
    True,
    "\u0000",
    "pipegate.v999",
]


def _mutate_json(rng: random.Random, text: str) -> str:
    try:
        document = json.loads(text)
    except ValueError:
        return text
    if not isinstance(document, dict) or not document:
        return text
    key = rng.choice(list(document))
    action = rng.random()
    if action < 0.5:
        document[key] = rng.choice(_ODD_VALUES)
    elif action < 0.7:
        del document[key]
    elif action < 0.85:
        document["type"] = rng.choice(
            ["hello", "open", "response", "nope", "", "window_update", "ping"]
        )
    else:
        document["extra_" + str(rng.randrange(100))] = rng.choice(_ODD_VALUES)
    return json.dumps(document)


def _flip(rng: random.Random, payload: bytes) -> bytes:
    if not payload:
        return bytes([rng.randrange(256)])
    data = bytearray(payload)
    for _ in range(rng.randint(1, 4)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


def _fuzz_message(rng: random.Random) -> str | bytes:
    base = _valid_message(rng)
    roll = rng.random()
    if roll < 0.2:
        return base
    if roll < 0.4:
        if isinstance(base, str):
            return _mutate_json(rng, base)
        return _flip(rng, base)
    if roll < 0.5:
        raw = base.encode() if isinstance(base, str) else base
        flipped = _flip(rng, raw)
        return flipped.decode("utf-8", "replace") if isinstance(base, str) else flipped
    if roll < 0.6:
        cut = rng.randrange(0, max(1, len(base)))
        return base[:cut]
    if roll < 0.7:
        return rng.randbytes(rng.choice([0, 1, 4, 5, 6, 64]))
    if roll < 0.75:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randint(0, 40)))
    if roll < 0.8:  # text where binary belongs and the other way round
        return base.decode("latin-1") if isinstance(base, bytes) else base.encode()
    if roll < 0.85:  # over the frame limit
        if rng.random() < 0.5:
            return encode(Data(1, b"\0" * (MAX_FRAME + 1024)))
        return json.dumps({"type": "ping", "id": 1, "pad": "x" * (MAX_FRAME + 1024)})
    if roll < 0.9:  # deeply nested JSON
        depth = rng.choice([100, 5000, 40000])
        return '{"type":"ping","id":' + "[" * depth + "]" * depth + "}"
    if roll < 0.95:
        return json.dumps(rng.choice([[], {}, None, 1, "ping", [{"type": "ping", "id": 1}]]))
    # a burst of window updates for a stream that does not exist
    return encode(WindowUpdate(stream_id=rng.randrange(1, 2**31), increment=2**31 - 1))


def _has_leak(payload: str | bytes | bytearray | None) -> bool:
    if payload is None:
        return False
    text = payload if isinstance(payload, str) else bytes(payload).decode("latin-1")
    return any(marker in text for marker in LEAK_MARKERS)


def _stream_script(rng: random.Random, open_message: Open) -> list[str | bytes]:
    """A plausible answer to the server's Open, with mutations and stray messages."""
    sid = open_message.stream_id
    script: list[str | bytes] = [
        encode(Response(stream_id=sid, status=200, headers=(("content-type", "text/plain"),))),
        encode(Data(sid, b"fuzzed body ")),
        encode(Data(sid, rng.randbytes(rng.randint(0, 300)), end_stream=True)),
    ]
    for _ in range(rng.randint(1, 3)):
        position = rng.randrange(len(script) + 1)
        roll = rng.random()
        if roll < 0.4:
            victim = rng.randrange(len(script))
            item = script[victim]
            script[victim] = _mutate_json(rng, item) if isinstance(item, str) else _flip(rng, item)
        elif roll < 0.55:
            script.insert(position, encode(Response(stream_id=sid, status=rng.randint(100, 599))))
        elif roll < 0.65:
            script.insert(position, encode(WebSocketData(sid, b"x", text=True)))
        elif roll < 0.75:
            script.insert(position, encode(Data(sid, b"\0" * (2 * 1024 * 1024 // 16))))
        elif roll < 0.85:
            script.insert(position, encode(Reset(stream_id=sid, code=rng.choice(list(ResetCode)))))
        elif roll < 0.92:
            script.insert(position, encode(WindowUpdate(stream_id=sid, increment=2**31 - 1)))
        else:
            script.insert(position, _fuzz_message(rng))
    return script


def _public_call(url: str, method: str) -> str:
    try:
        response = httpx.request(method, url, content=b"q" * 100, timeout=PUBLIC_TIMEOUT)
    except httpx.TimeoutException:
        return "hung"
    except httpx.HTTPError as exc:
        return f"error {type(exc).__name__}"
    if _has_leak(response.content):
        return f"leak {response.status_code} {response.text[:300]!r}"
    return f"status {response.status_code}"


def _run_case(
    index: int, rng: random.Random, server_base: str, token: str, report: FuzzReport
) -> None:
    """Odd cases fuzz a bare tunnel; even cases first let a public request open a
    stream, then answer it with a mutated script (reaching the relay code)."""
    name = f"case {index} (seed {SEED})"
    with_stream = index % 2 == 0
    ws_base = server_base.replace("http://", "ws://", 1)
    try:
        ws = connect(
            f"{ws_base}/fuzz-{index}",
            additional_headers={"authorization": f"Bearer {token}"},
            subprotocols=[ProtocolVersion.V1.value],  # type: ignore[list-item]
            open_timeout=10,
            close_timeout=2,
            max_size=None,
        )
    except InvalidStatus as refused:
        report.outcomes[f"refused {refused.response.status_code}"] += 1
        if _has_leak(refused.response.body):
            report.leaks.append(f"{name}: upgrade refusal body {refused.response.body!r}")
        return
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        public: concurrent.futures.Future[str] | None = None
        with ws:
            try:
                ws.recv(timeout=10)  # the server's hello
                if with_stream:
                    ws.send(_client_hello())
                    method = rng.choice(["GET", "POST"])
                    public = pool.submit(
                        _public_call, f"{server_base}/fuzz-{index}/p?q={index}", method
                    )
                    opened = _next_open(ws)
                    for payload in _stream_script(rng, opened):
                        ws.send(payload)
                else:
                    if rng.random() < 0.8:
                        ws.send(_client_hello())
                    for _ in range(rng.randint(1, 4)):
                        ws.send(_fuzz_message(rng))
                _expect_pong(ws, rng, name, report)
            except ConnectionClosed as closed:
                code = closed.rcvd.code if closed.rcvd else None
                reason = closed.rcvd.reason if closed.rcvd else ""
                report.outcomes["closed"] += 1
                report.close_codes[code] += 1
                if code not in PROPER_CLOSE_CODES:
                    report.improper.append(f"{name}: closed with {code} {reason!r}")
                if _has_leak(reason):
                    report.leaks.append(f"{name}: close reason {reason!r}")
            except TimeoutError:
                report.outcomes["silent"] += 1
                report.silent.append(f"{name}: neither pong nor close within 5 s")
        # The tunnel is closed now: the public caller must have its answer promptly.
        if public is not None:
            try:
                outcome = public.result(timeout=PUBLIC_TIMEOUT + 5)
            except concurrent.futures.TimeoutError:
                outcome = "hung"
            report.public[outcome.split(" ", 2)[0] + " " + outcome.split(" ")[-1]] += 1
            if outcome == "hung":
                report.silent.append(f"{name}: the public request hung")
            elif outcome.startswith("leak"):
                report.leaks.append(f"{name}: public response {outcome}")


def _next_open(ws: ClientConnection) -> Open:
    deadline = time.monotonic() + 10
    while True:
        message = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        decoded = decode(message)
        if isinstance(decoded, Open):
            return decoded
        if isinstance(decoded, Ping):
            ws.send(encode(Pong(id=decoded.id)))


def _expect_pong(ws: ClientConnection, rng: random.Random, name: str, report: FuzzReport) -> None:
    ping_id = rng.randrange(2**40)
    ws.send(encode(Ping(id=ping_id)))
    deadline = time.monotonic() + 5.0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        message = ws.recv(timeout=remaining)
        if _has_leak(message):
            report.leaks.append(f"{name}: message {message!r:.300}")
        try:
            decoded = decode(message)
        except DecodeError:
            report.improper.append(f"{name}: server sent undecodable {message!r:.200}")
            continue
        if isinstance(decoded, Pong) and decoded.id == ping_id:
            report.outcomes["survived"] += 1
            return


@pytest.fixture(scope="module")
def fuzz_report(origin: str) -> Iterator[FuzzReport]:
    with tracked_group() as group:
        factory = TunnelFactory(group, origin)
        bystander = factory.tunnel("bystander")
        assert bystander.server is not None
        report = FuzzReport()
        rng = random.Random(SEED)
        for index in range(CASES):
            _run_case(index, rng, bystander.server_base, factory.token, report)
            if (index + 1) % BATCH == 0:
                if bystander.server.poll() is not None:
                    break
                try:
                    health = httpx.get(f"{bystander.server_base}/_pipegate/health", timeout=5)
                    if health.status_code != 200:
                        report.health_failures.append(f"after case {index}: {health.status_code}")
                except httpx.HTTPError as exc:
                    report.health_failures.append(f"after case {index}: {exc!r}")
                try:
                    echo = httpx.get(f"{bystander.public_url}/echo/after-{index}", timeout=5)
                    if echo.status_code != 200:
                        report.bystander_failures.append(f"after case {index}: {echo.status_code}")
                except httpx.HTTPError as exc:
                    report.bystander_failures.append(f"after case {index}: {exc!r}")
        report.server_exit = bystander.server.poll()
        if report.server_exit is None:
            wait_relaying(bystander.public_url, timeout=5)
        report.server_log = bystander.server.output()
        yield report


def test_fuzz_server_never_crashes(fuzz_report: FuzzReport) -> None:
    assert fuzz_report.server_exit is None, fuzz_report.server_log[-3000:]
    assert fuzz_report.health_failures == []
    assert sum(fuzz_report.outcomes.values()) == CASES, fuzz_report.outcomes


def test_fuzz_reached_the_relay(fuzz_report: FuzzReport) -> None:
    """The stream cases really opened streams: public callers got answers."""
    assert sum(fuzz_report.public.values()) == CASES // 2, fuzz_report.public
    assert any(key.startswith("status") for key in fuzz_report.public), fuzz_report.public


def test_fuzz_other_tunnel_keeps_serving(fuzz_report: FuzzReport) -> None:
    assert fuzz_report.bystander_failures == []


def test_fuzz_no_traceback_reaches_the_peer(fuzz_report: FuzzReport) -> None:
    assert fuzz_report.leaks == []


def test_fuzz_every_tunnel_answers_or_closes_properly(fuzz_report: FuzzReport) -> None:
    assert fuzz_report.silent == [], fuzz_report.outcomes
    assert fuzz_report.improper == [], dict(fuzz_report.close_codes)


def test_fuzz_server_logs_no_unhandled_exception(fuzz_report: FuzzReport) -> None:
    """Junk from a peer is an expected event, logged in one line, not a crash dump."""
    log = fuzz_report.server_log
    assert "Traceback" not in log, log[log.find("Traceback") - 500 :][:4000]


def test_fuzz_bad_upgrade_requests_get_4xx(origin: str) -> None:
    """Random connection ids and token headers on the upgrade: never a 5xx, never a leak."""
    rng = random.Random(SEED + 1)
    with tracked_group() as group:
        factory = TunnelFactory(group, origin)
        _, port = factory.server()
        alphabet = "abcXYZ019_-.~%!$&'()*+,;=:@é"
        for index in range(60):
            conn_id = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80)))
            headers = rng.choice(
                [
                    {},
                    {"authorization": "Bearer"},
                    {"authorization": "Basic abc"},
                    {"authorization": "Bearer " + "x" * rng.randint(0, 5000)},
                    {"pipegate-client-token": factory.token + "x"},
                    {"authorization": f"Bearer {factory.token}"},
                ]
            )
            protocols = rng.choice([[], ["pipegate.v1"], ["x", "y"], ["pipegate.v0"]])
            url = f"ws://127.0.0.1:{port}/{quote(conn_id, safe=_PATH_SAFE)}"
            body: bytes | bytearray = b""
            try:
                with connect(
                    url,
                    additional_headers=headers,
                    subprotocols=protocols,  # type: ignore[arg-type]
                    open_timeout=10,
                ) as ws:
                    ws.close()
                    status = 101
            except InvalidStatus as refused:
                status = refused.response.status_code
                body = refused.response.body or b""
            assert not _has_leak(body), body
            assert status < 500, f"case {index}: {conn_id!r} {headers} {protocols} -> {status}"
        assert httpx.get(f"http://127.0.0.1:{port}/_pipegate/health", timeout=5).status_code == 200
