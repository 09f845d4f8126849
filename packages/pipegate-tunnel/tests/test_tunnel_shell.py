"""The shared shell, with a server-role and a client-role shell paired in memory.

No sockets: :class:`MemoryTransport` hands each batch to the peer shell on the next
loop turn, can be "backed up" (``paused``) like a full socket, and records what
crossed it. Both roles run the same :class:`TunnelShell` code; only the tiny test
subclasses below differ, as the real server and client do.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import pytest
from pipegate_protocol import (
    CloseCode,
    Connection,
    Data,
    Limits,
    Open,
    Reset,
    ResetCode,
    Response,
    Role,
    StreamKind,
    WebSocketClose,
    WebSocketData,
)
from pipegate_tunnel import (
    HIGH_WATER,
    Heartbeat,
    StreamChannel,
    StreamObserver,
    StreamObservers,
    TunnelShell,
)
from pipegate_tunnel.errors import StreamGone, TransportClosed

SMALL = Limits(max_frame_size=16 * 1024, initial_window=64 * 1024)


class MemoryTransport:
    """One direction of an in-memory WebSocket: delivers to ``peer`` in order."""

    def __init__(self) -> None:
        self.peer: TunnelShell | None = None
        self.paused = False
        self.resumed = asyncio.Event()
        self.sent: list[str | bytes] = []
        self.closed_with: tuple[int, str] | None = None
        self.aborted = False
        self.broken = False

    def _deliver(self, messages: Sequence[str | bytes]) -> None:
        if self.broken:
            raise TransportClosed(code=1006)
        self.sent.extend(messages)
        peer = self.peer
        if peer is not None:
            batch = list(messages)
            asyncio.get_running_loop().call_soon(peer.receive_batch, batch)

    def send_now(self, messages: Sequence[str | bytes]) -> bool:
        if self.paused:
            return False
        self._deliver(messages)
        return True

    async def send(self, messages: Sequence[str | bytes]) -> None:
        while self.paused:
            self.resumed.clear()
            await self.resumed.wait()
        self._deliver(messages)

    def resume(self) -> None:
        self.paused = False
        self.resumed.set()

    async def close(self, code: int, reason: str) -> None:
        self.closed_with = (code, reason)
        if self.peer is not None:
            self.peer.lost(code)

    def abort(self) -> None:
        self.aborted = True


class PushShell(TunnelShell):
    """A role whose transport pushes messages in: the reader only waits."""

    def __init__(self, conn: Connection, transport: MemoryTransport, **kwargs: object) -> None:
        beat = kwargs.pop("heartbeat", Heartbeat(30.0, 60.0))
        hello = kwargs.pop("hello_timeout", 5.0)
        super().__init__(
            conn,
            transport,
            connection_id="mem",
            heartbeat=beat,  # type: ignore[arg-type]
            hello_timeout=hello,  # type: ignore[arg-type]
            observer=kwargs.pop("observer", None),  # type: ignore[arg-type]
        )
        self.opened: asyncio.Queue[StreamChannel] = asyncio.Queue()
        self.resets: list[Reset] = []

    async def _read_loop(self) -> None:
        await asyncio.Event().wait()

    def _on_open(self, message: Open) -> None:
        channel = StreamChannel(self, message.stream_id, method=message.method, path=message.path)
        self.register(channel)
        self.opened.put_nowait(channel)

    def _on_reset(self, channel: StreamChannel, message: Reset) -> None:
        self.resets.append(message)


@asynccontextmanager
async def paired(
    *,
    client_limits: Limits = SMALL,
    server_kwargs: dict[str, object] | None = None,
    client_kwargs: dict[str, object] | None = None,
    connect: bool = True,
) -> AsyncIterator[tuple[PushShell, PushShell, MemoryTransport, MemoryTransport]]:
    to_client, to_server = MemoryTransport(), MemoryTransport()
    server = PushShell(
        Connection(Role.SERVER, limits=SMALL, connection_id="mem"),
        to_client,
        **(server_kwargs or {}),
    )
    client = PushShell(
        Connection(Role.CLIENT, limits=client_limits, capabilities=["websocket"]),
        to_server,
        **(client_kwargs or {}),
    )
    if connect:
        to_client.peer, to_server.peer = client, server
    tasks = [asyncio.create_task(server.run()), asyncio.create_task(client.run())]
    try:
        if connect:
            await asyncio.wait_for(asyncio.gather(server._hello.wait(), client._hello.wait()), 5)
        yield server, client, to_client, to_server
    finally:
        for shell in (server, client):
            shell.close(1000, "test over")
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)


def open_stream(server: PushShell, *, end_stream: bool = False) -> StreamChannel:
    stream_id = server.conn.open_stream(method="POST", path="/up", end_stream=end_stream)
    channel = StreamChannel(server, stream_id, method="POST", path="/up")
    server.register(channel)
    server.flush()
    return channel


async def read_body(channel: StreamChannel) -> bytes:
    parts = []
    while True:
        item = await asyncio.wait_for(channel.next(), 5)
        assert isinstance(item, Data)
        parts.append(item.data)
        channel.acknowledge(len(item.data))
        if item.end_stream:
            return b"".join(parts)


async def test_a_body_larger_than_window_and_frame_arrives_whole_and_in_order() -> None:
    body = bytes(range(256)) * 1024 * 3  # 768 KiB: 12 windows, 48 frames
    async with paired() as (server, client, to_client, _):
        sending = open_stream(server)
        receiving = await asyncio.wait_for(client.opened.get(), 5)
        send = asyncio.create_task(sending.send_data(body, end_stream=True))
        assert await read_body(receiving) == body
        await asyncio.wait_for(send, 5)
        frames = [m for m in to_client.sent if isinstance(m, bytes)]
        assert max(len(f) for f in frames) <= SMALL.max_frame_size + 64
        assert sending.bytes_sent == receiving.bytes_received == len(body)


async def test_the_response_head_and_first_body_piece_leave_in_one_write() -> None:
    async with paired() as (server, client, _, to_server):
        open_stream(server, end_stream=True)
        stream = await asyncio.wait_for(client.opened.get(), 5)
        writes: list[int] = []
        original = to_server.send_now

        def counting(messages: Sequence[str | bytes]) -> bool:
            writes.append(len(messages))
            return original(messages)

        to_server.send_now = counting  # type: ignore[method-assign]
        stream.queue_response(200, [("content-type", "text/plain")])
        await stream.send_data(b"hello", end_stream=True)
        assert writes == [2]


async def test_a_backed_up_transport_bounds_the_queue_and_keeps_order() -> None:
    body = b"x" * (4 * 1024 * 1024)
    limits = Limits(max_frame_size=16 * 1024, initial_window=8 * 1024 * 1024)
    async with paired(client_limits=limits) as (server, client, to_client, _):
        channel = open_stream(server)
        receiving = await asyncio.wait_for(client.opened.get(), 5)
        to_client.paused = True
        peak = 0
        send = asyncio.create_task(channel.send_data(body, end_stream=True))
        for _ in range(400):
            await asyncio.sleep(0)
            peak = max(peak, server._buffered)
        assert not send.done()  # the sender waits for the queue to drain
        assert not server.is_writable
        assert HIGH_WATER < peak <= HIGH_WATER + limits.max_frame_size + 1024
        to_client.resume()
        assert await read_body(receiving) == body
        await asyncio.wait_for(send, 5)


async def test_flush_never_overtakes_what_the_writer_is_sending() -> None:
    async with paired() as (server, _client, to_client, _):
        first = open_stream(server, end_stream=True)
        to_client.paused = True
        server.conn.send_ping(101)
        server.flush()  # refused: queued for the writer, which waits
        await asyncio.sleep(0)
        to_client.paused = False  # writable, but the writer has not sent yet
        first.reset(ResetCode.CANCELLED)  # flush() now must queue behind the ping
        to_client.resume()
        for _ in range(20):
            await asyncio.sleep(0)
        tail = [m for m in to_client.sent if isinstance(m, str)][-2:]
        assert '"ping"' in tail[0]
        assert '"reset"' in tail[1]


async def test_a_reset_from_the_peer_fails_the_channel_and_reaches_the_role() -> None:
    async with paired() as (server, client, _, _):
        channel = open_stream(server)
        remote = await asyncio.wait_for(client.opened.get(), 5)
        remote.reset(ResetCode.UPSTREAM_FAILED, "local app failed")
        with pytest.raises(StreamGone):
            await asyncio.wait_for(channel.next(), 5)
        assert [r.code for r in server.resets] == [ResetCode.UPSTREAM_FAILED]
        with pytest.raises(StreamGone):
            await channel.send_data(b"more")


async def test_a_lost_tunnel_hands_out_what_arrived_before_failing() -> None:
    async with paired() as (server, client, _, _):
        channel = open_stream(server, end_stream=True)
        remote = await asyncio.wait_for(client.opened.get(), 5)
        await remote.send_response(200, [])
        await remote.send_data(b"whole", end_stream=True)
        await asyncio.sleep(0.01)
        server.lost(1006)
        assert isinstance(await channel.next(), Response)
        assert await channel.next() == Data(channel.stream_id, b"whole", end_stream=True)
        with pytest.raises(StreamGone):
            await channel.next()


async def test_a_protocol_error_closes_with_its_close_code() -> None:
    async with paired() as (server, _, to_client, _):
        server.receive_batch(["{not json"])
        await asyncio.wait_for(server.wait_closed(), 5)
        assert to_client.closed_with is not None
        assert to_client.closed_with[0] == CloseCode.PROTOCOL_ERROR
        assert server.close_code == CloseCode.PROTOCOL_ERROR


async def test_no_hello_in_time_closes_with_4004(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    async with paired(connect=False, server_kwargs={"hello_timeout": 0.2}) as (
        server,
        _,
        to_client,
        _,
    ):
        await asyncio.wait_for(server.wait_closed(), 5)
        assert to_client.closed_with == (CloseCode.HELLO_TIMEOUT, "no hello received in time")
        assert "tunnel hello timeout: id=mem" in caplog.text


async def test_a_silent_peer_is_pinged_then_closed_with_4005() -> None:
    beat = Heartbeat(0.05, 0.3, only_when_silent=True)
    async with paired(client_kwargs={"heartbeat": beat}) as (_, client, _, to_server):
        to_server.peer = None  # the server hears nothing more, so it never answers
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(client.wait_closed(), 5)
        assert client.close_code == CloseCode.HEARTBEAT_TIMEOUT
        assert loop.time() - started >= 0.25
        pings = [m for m in to_server.sent if isinstance(m, str) and '"ping"' in m]
        assert 2 <= len(pings) <= 8  # once per interval of silence, not per loop turn


async def test_a_server_pings_every_interval_even_when_the_peer_is_busy() -> None:
    beat = Heartbeat(0.05, 10.0)
    async with paired(server_kwargs={"heartbeat": beat}) as (server, client, to_client, _):
        for _ in range(6):
            client.ping()  # the client keeps talking
            await asyncio.sleep(0.05)
        pings = [m for m in to_client.sent if isinstance(m, str) and '"ping"' in m]
        assert len(pings) >= 3
        assert not server.closed


async def test_close_gives_up_on_a_peer_that_takes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import pipegate_tunnel._shell as shell_module

    monkeypatch.setattr(shell_module, "CLOSE_TIMEOUT", 0.1)
    async with paired() as (server, _, to_client, _):
        to_client.paused = True
        server.ping()
        await asyncio.sleep(0)
        server.close(1001, "going")
        await asyncio.wait_for(server.wait_closed(), 5)
        assert to_client.aborted
        assert to_client.closed_with is None


async def test_a_broken_transport_ends_the_tunnel_and_fails_its_streams() -> None:
    async with paired() as (server, client, to_client, _):
        channel = open_stream(server)
        await asyncio.wait_for(client.opened.get(), 5)
        to_client.broken = True
        with pytest.raises(StreamGone):
            await channel.send_data(b"x", end_stream=True)
        assert server.closed


async def test_go_away_reaches_the_peer_and_stops_new_streams() -> None:
    async with paired() as (server, client, _, _):
        client.goaway()
        await asyncio.sleep(0.01)
        assert server.conn.goaway_received is not None
        assert not server.conn.can_open_stream


class Recorder(StreamObserver):
    def __init__(self) -> None:
        self.events: list[tuple[str, int]] = []
        self.bodies: list[bytes] = []
        self.heads: list[list[tuple[str, str]]] = []
        self.websocket: list[tuple[str, bytes | int | str, bool, bool]] = []

    def stream_opened(self, channel: StreamChannel) -> None:
        self.events.append(("open", channel.stream_id))

    def response_head(self, channel: StreamChannel, status: int) -> None:
        self.events.append(("head", status))
        self.heads.append(list(channel.response_headers))

    def body(self, channel: StreamChannel, data: bytes, *, sent: bool) -> None:
        self.events.append(("sent" if sent else "received", len(data)))
        self.bodies.append(bytes(data))

    def websocket_message(
        self, channel: StreamChannel, data: bytes, *, sent: bool, text: bool, fin: bool
    ) -> None:
        self.websocket.append(("sent" if sent else "received", bytes(data), text, fin))

    def websocket_close(
        self, channel: StreamChannel, code: int, reason: str, *, sent: bool
    ) -> None:
        self.websocket.append(("close sent" if sent else "close received", code, sent, False))
        self.websocket.append(("reason", reason, sent, False))

    def stream_ended(self, channel: StreamChannel) -> None:
        self.events.append(("end", channel.status or 0))


async def test_the_observer_sees_each_step_on_both_sides() -> None:
    server_log, client_log = Recorder(), Recorder()
    async with paired(
        server_kwargs={"observer": server_log}, client_kwargs={"observer": client_log}
    ) as (server, client, _, _):
        channel = open_stream(server)
        await channel.send_data(b"abc", end_stream=True)
        remote = await asyncio.wait_for(client.opened.get(), 5)
        assert await read_body(remote) == b"abc"
        await remote.send_response(201, [("x-a", "1"), ("x-a", "2")])
        await remote.send_data(b"hello", end_stream=True)
        assert isinstance(await asyncio.wait_for(channel.next(), 5), Response)
        assert await asyncio.wait_for(channel.next(), 5) == Data(
            channel.stream_id, b"hello", end_stream=True
        )
        client.finish(remote)
        server.finish(channel)
    assert server_log.events == [
        ("open", 1),
        ("sent", 3),
        ("head", 201),
        ("received", 5),
        ("end", 201),
    ]
    assert client_log.events == [
        ("open", 1),
        ("received", 3),
        ("head", 201),
        ("sent", 5),
        ("end", 201),
    ]
    # The pieces themselves pass (not only their sizes), and the response headers in
    # wire order with duplicates, on both sides.
    assert server_log.bodies == [b"abc", b"hello"]
    assert client_log.bodies == [b"abc", b"hello"]
    assert server_log.heads == client_log.heads == [[("x-a", "1"), ("x-a", "2")]]


async def test_the_observer_sees_websocket_messages_and_closes_both_ways() -> None:
    server_log, client_log = Recorder(), Recorder()
    async with paired(
        server_kwargs={"observer": server_log}, client_kwargs={"observer": client_log}
    ) as (server, client, _, _):
        stream_id = server.conn.open_stream(
            method="GET", path="/ws", kind=StreamKind.WEBSOCKET, end_stream=True
        )
        channel = StreamChannel(server, stream_id, method="GET", path="/ws")
        server.register(channel)
        server.flush()
        remote = await asyncio.wait_for(client.opened.get(), 5)
        await remote.send_response(101, [])
        assert isinstance(await asyncio.wait_for(channel.next(), 5), Response)
        await channel.send_websocket(b"ping", text=True)
        assert await asyncio.wait_for(remote.next(), 5) == WebSocketData(stream_id, b"ping", True)
        await remote.send_websocket(b"\x00\x01", text=False, fin=False)
        await remote.send_websocket(b"\x02", text=False)
        await asyncio.wait_for(channel.next(), 5)
        await asyncio.wait_for(channel.next(), 5)
        remote.send_websocket_close(4000, "bye")
        assert await asyncio.wait_for(channel.next(), 5) == WebSocketClose(
            stream_id=stream_id, code=4000, reason="bye"
        )
        client.finish(remote)
        server.finish(channel)
    assert client_log.websocket == [
        ("received", b"ping", True, True),
        ("sent", b"\x00\x01", False, False),
        ("sent", b"\x02", False, True),
        ("close sent", 4000, True, False),
        ("reason", "bye", True, False),
    ]
    assert server_log.websocket == [
        ("sent", b"ping", True, True),
        ("received", b"\x00\x01", False, False),
        ("received", b"\x02", False, True),
        ("close received", 4000, False, False),
        ("reason", "bye", False, False),
    ]


async def test_stream_observers_hand_each_event_to_each_observer_in_order() -> None:
    first, second = Recorder(), Recorder()
    order: list[str] = []

    class Tagged(StreamObserver):
        def __init__(self, tag: str) -> None:
            self.tag = tag

        def stream_ended(self, channel: StreamChannel) -> None:
            order.append(self.tag)

    fan_out = StreamObservers(first, second, Tagged("a"), Tagged("b"))
    async with paired(client_kwargs={"observer": fan_out}) as (server, client, _, _):
        channel = open_stream(server)
        await channel.send_data(b"abc", end_stream=True)
        remote = await asyncio.wait_for(client.opened.get(), 5)
        assert await read_body(remote) == b"abc"
        await remote.send_response(200, [])
        await remote.send_data(b"ok", end_stream=True)
        client.finish(remote)
    assert (
        first.events
        == second.events
        == [
            ("open", 1),
            ("received", 3),
            ("head", 200),
            ("sent", 2),
            ("end", 200),
        ]
    )
    assert order == ["a", "b"]


async def test_finishing_an_open_stream_cancels_it_at_the_peer() -> None:
    async with paired() as (server, client, _, _):
        channel = open_stream(server)
        remote = await asyncio.wait_for(client.opened.get(), 5)
        assert server.finish(channel)
        assert not server.finish(channel)  # once
        with pytest.raises(StreamGone):
            await asyncio.wait_for(remote.next(), 5)
        assert [r.code for r in client.resets] == [ResetCode.CANCELLED]
        assert server.active_streams == 0
        await asyncio.wait_for(server.wait_idle(), 1)


def test_websocket_kind_is_kept_on_the_channel() -> None:
    shell = object.__new__(TunnelShell)
    shell.loop = asyncio.new_event_loop()
    try:
        channel = StreamChannel(shell, 3, method="GET", path="/ws", kind=StreamKind.WEBSOCKET)
        assert channel.kind is StreamKind.WEBSOCKET
        assert channel.pending == 0
    finally:
        shell.loop.close()


async def test_a_ping_when_silent_heartbeat_stays_quiet_while_the_peer_talks() -> None:
    beat = Heartbeat(0.05, 10.0, only_when_silent=True)
    async with paired(client_kwargs={"heartbeat": beat}) as (server, _, _, to_server):
        for _ in range(8):
            server.ping()  # the server keeps talking; the client only answers
            await asyncio.sleep(0.025)
        sent = [m for m in to_server.sent if isinstance(m, str)]
        assert any('"pong"' in m for m in sent)
        assert not any('"ping"' in m for m in sent)


async def test_a_ping_flood_that_never_reads_the_pongs_is_closed_with_1008() -> None:
    """Pongs are answers the reader queues; past the queue limit the tunnel closes."""
    async with paired() as (server, client, to_client, to_server):
        to_client.paused = True  # the client reads nothing the server sends
        to_server.peer = None
        peak = 0
        for _ in range(200):  # at most 200k pings: ~4.4 MiB of pongs
            batch = []
            for _ in range(1000):
                client.conn.send_ping(1)
                batch.extend(client.conn.data_to_send())
            server.receive_batch(batch)
            peak = max(peak, server._buffered)
            if server.closed:
                break
            await asyncio.sleep(0)
        assert server.closed
        assert server.close_code == CloseCode.POLICY_VIOLATION
        assert peak <= server.queue_limit + 1000 * 32  # plus one received batch's pongs
