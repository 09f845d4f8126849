"""A client and a server Connection paired in memory, driven by hypothesis.

Two FIFO queues model the tunnel WebSocket, one per direction: each direction stays in
order (as a WebSocket does) but the rules deliver from either queue at any time, so the
two directions interleave at random. Rules open streams up to the limit, send heads and
bodies (HTTP and relayed WebSocket) in random chunk sizes within the windows,
acknowledge random amounts, reset and close streams, ping, and try to overrun windows
and the stream limit.

Checked after every step (rules ST-4, ST-8, FC-1..FC-6, WS-2):

* every stream-scoped message arrives intact and in order, or is ignored (``None``)
  only because the receiver already considers the stream gone;
* every sender's window equals exactly what the receiver granted minus what was sent,
  and never goes negative; credit is returned only for consumed bytes;
* neither side ever has more streams open than the client's max_concurrent_streams;
* honest peers never raise a RemoteProtocolError; over-window sends and opens over the
  limit raise LocalProtocolError and change nothing.

At teardown both queues are drained to the end and every finished stream is gone on
both sides.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from pipegate_protocol import (
    CAPABILITY_WEBSOCKET,
    Connection,
    ConnectionState,
    Data,
    GoAway,
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
)

SERVER, CLIENT = Role.SERVER, Role.CLIENT

# A passing run takes seconds; a failing one may shrink for up to Hypothesis's limit of
# five minutes, which must not be cut short by the suite's 300 s timeout.
pytestmark = pytest.mark.timeout(600)


def payload_bytes(stream_id: int, offset: int, size: int) -> bytes:
    """Deterministic, position-dependent bytes, so loss or reordering shows up."""
    return random.Random(stream_id * 1_000_003 + offset).randbytes(size)


@dataclass
class Direction:
    """One direction of one stream: what its sender sent and what arrived."""

    expected: list[Message] = field(default_factory=list)  # stream messages, in send order
    delivered: int = 0  # how many of ``expected`` the receiver has processed
    sent_bytes: int = 0  # flow-controlled payload bytes sent
    received_bytes: int = 0  # payload bytes the receiver's application got
    acked: int = 0  # bytes the receiver's application acknowledged
    acked_effective: int = 0  # ... while the receiver still returned credit for them
    granted: int = 0  # increments the receiver emitted in window updates
    granted_delivered: int = 0  # increments that reached the sender
    ended: bool = False  # the sender ended this direction (end_stream / close / reset)


@dataclass
class StreamModel:
    stream_id: int
    kind: StreamKind
    request: Direction = field(default_factory=Direction)  # server -> client
    response: Direction = field(default_factory=Direction)  # client -> server
    client_final_head: bool = False  # client sent its final response
    client_accepted_websocket: bool = False  # client sent 101
    server_saw_websocket: bool = False  # server received 101
    terminated: bool = False  # reset or ws-closed by either side
    offsets: dict[Role, int] = field(default_factory=lambda: {SERVER: 0, CLIENT: 0})

    def direction_from(self, role: Role) -> Direction:
        return self.request if role is SERVER else self.response

    def websocket_at(self, role: Role) -> bool:
        """Whether ``role`` considers this an accepted WebSocket stream."""
        return self.server_saw_websocket if role is SERVER else self.client_accepted_websocket


def end_delivered(direction: Direction) -> bool:
    """Whether the message that ended this direction has reached the receiver."""
    return any(
        isinstance(m, Data | Open | Response) and m.end_stream
        for m in direction.expected[: direction.delivered]
    )


class TunnelMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.server = Connection(Role.SERVER)
        self.client = Connection(Role.CLIENT)
        self.queues: dict[Role, list[str | bytes]] = {SERVER: [], CLIENT: []}  # by sender
        self.streams: dict[int, StreamModel] = {}
        #: The kind of each side's unfinished WebSocket message per stream (WS-6).
        self.ws_message_kind: dict[tuple[Role, int], bool | None] = {}
        self.pings_sent: dict[Role, list[int]] = {SERVER: [], CLIENT: []}
        self.pongs_seen: dict[Role, list[int]] = {SERVER: [], CLIENT: []}

    # ------------------------------------------------------------ plumbing

    def conn(self, role: Role) -> Connection:
        return self.server if role is SERVER else self.client

    def peer(self, role: Role) -> Connection:
        return self.client if role is SERVER else self.server

    def flush(self, role: Role) -> None:
        """Move what ``role`` queued onto the wire, noting the window updates it grants."""
        for payload in self.conn(role).data_to_send():
            update = decode(payload)
            if isinstance(update, WindowUpdate):
                model = self.streams[update.stream_id]
                # The receiver of a direction grants credit for it: role CLIENT grants for
                # the request direction, SERVER for the response direction.
                direction = model.request if role is CLIENT else model.response
                direction.granted += update.increment
                assert direction.granted <= direction.acked, "credit for unconsumed bytes"
            self.queues[role].append(payload)

    def expect(self, sender: Role, stream_id: int, message: Message) -> None:
        self.streams[stream_id].direction_from(sender).expected.append(message)

    def initial_window_towards(self, receiver: Role) -> int:
        return self.conn(receiver).local_limits.initial_window

    # ------------------------------------------------------------ setup

    @initialize(
        server_window=st.one_of(st.integers(1, 64), st.integers(1, 5000)),
        client_window=st.one_of(st.integers(1, 64), st.integers(1, 5000)),
        server_frame=st.sampled_from([16384, 20000]),
        client_frame=st.sampled_from([16384, 20000]),
        max_streams=st.integers(1, 4),
        websocket=st.sampled_from([True, True, True, False]),
    )
    def handshake(
        self,
        server_window: int,
        client_window: int,
        server_frame: int,
        client_frame: int,
        max_streams: int,
        websocket: bool,
    ) -> None:
        self.server = Connection(
            Role.SERVER,
            limits=Limits(max_frame_size=server_frame, initial_window=server_window),
            connection_id="node",
        )
        self.client = Connection(
            Role.CLIENT,
            limits=Limits(
                max_frame_size=client_frame,
                initial_window=client_window,
                max_concurrent_streams=max_streams,
            ),
            capabilities=[CAPABILITY_WEBSOCKET] if websocket else [],
        )
        self.flush(SERVER)
        self.flush(CLIENT)
        # Hellos first (HS-4): deliver both so the rules start from an open tunnel.
        self.deliver(SERVER, 1)
        self.deliver(CLIENT, 1)
        assert self.server.state is self.client.state is ConnectionState.OPEN

    # ------------------------------------------------------------ delivery

    def deliver(self, sender: Role, count: int) -> None:
        receiver_role = CLIENT if sender is SERVER else SERVER
        receiver = self.conn(receiver_role)
        queue = self.queues[sender]
        for _ in range(min(count, len(queue))):
            payload = queue.pop(0)
            message = decode(payload)
            result = receiver.receive(payload)  # honest peers: never raises
            self.check_delivery(sender, receiver_role, message, result)
            self.flush(receiver_role)  # pongs, window updates

    def check_delivery(
        self, sender: Role, receiver_role: Role, message: Message, result: Message | None
    ) -> None:
        receiver = self.conn(receiver_role)
        if isinstance(message, Ping):
            assert result == message
            return
        if isinstance(message, Pong):
            assert result == message
            self.pongs_seen[receiver_role].append(message.id)
            return
        if isinstance(message, GoAway):
            assert result == message
            return
        stream_id = getattr(message, "stream_id", None)
        if stream_id is None:  # a hello
            assert result == message
            return
        model = self.streams[stream_id]
        if isinstance(message, WindowUpdate):
            direction = model.request if sender is CLIENT else model.response
            if result is None:
                assert not receiver.is_open(stream_id)
            else:
                assert result == message
                direction.granted_delivered += message.increment
            return
        direction = model.direction_from(sender)
        assert direction.delivered < len(direction.expected), f"unexpected {message!r}"
        expected = direction.expected[direction.delivered]
        direction.delivered += 1
        # Intact and in order: the receiver decodes exactly what the sender sent.
        assert message == expected
        if result is None:
            # ST-8: ignored only because the stream is already gone for the receiver.
            assert not receiver.is_open(stream_id)
            assert not isinstance(message, Open)
            event("late frame on a gone stream ignored")
            return
        assert result == expected
        if isinstance(message, Response) and message.status == 101:
            model.server_saw_websocket = True
            event("websocket accepted")
        if isinstance(message, Data | WebSocketData):
            direction.received_bytes += len(message.data)
            event(f"{type(message).__name__} to the {receiver_role.value} side")

    def pump(self, data: st.DataObject) -> None:
        """Deliver a few messages each way, in a random order, after an action."""
        counts = {role: data.draw(st.integers(0, 4)) for role in (SERVER, CLIENT)}
        first = data.draw(st.sampled_from([SERVER, CLIENT]))
        second = CLIENT if first is SERVER else SERVER
        self.deliver(first, counts[first])
        self.deliver(second, counts[second])
        # The applications consume some of what arrived.
        for role in (SERVER, CLIENT):
            if not self.unacknowledged(role):
                continue
            if data.draw(st.booleans()):
                self.acknowledge_some(role, data)

    @rule(sender=st.sampled_from([SERVER, CLIENT]), count=st.integers(1, 6))
    def deliver_some(self, sender: Role, count: int) -> None:
        self.deliver(sender, count)

    # ------------------------------------------------------------ opening

    @rule(websocket=st.booleans(), end_stream=st.booleans(), data=st.data())
    def open_stream(self, websocket: bool, end_stream: bool, data: st.DataObject) -> None:
        if not self.server.can_open_stream:
            self.check_open_refused()
            return
        kind = (
            StreamKind.WEBSOCKET
            if websocket and self.server.peer_supports_websocket
            else StreamKind.HTTP
        )
        stream_id = self.server.open_stream(
            method="GET" if end_stream else "POST",
            path=f"/stream/{len(self.streams)}",
            headers=[("x-dup", "1"), ("x-dup", "\xff\t")],
            kind=kind,
            end_stream=end_stream,
        )
        assert stream_id == max(self.streams, default=0) + 1  # ST-1
        (payload,) = self.server.data_to_send()
        opened = decode(payload)
        assert isinstance(opened, Open)
        assert opened.stream_id == stream_id
        assert opened.kind is kind
        assert opened.headers == (("x-dup", "1"), ("x-dup", "\xff\t"))
        assert opened.end_stream is (end_stream or kind is StreamKind.WEBSOCKET)  # WS-3
        self.queues[SERVER].append(payload)
        model = StreamModel(stream_id, kind)
        self.streams[stream_id] = model
        model.request.expected.append(opened)
        model.request.ended = opened.end_stream
        self.pump(data)

    def check_open_refused(self) -> None:
        """ST-4/LV-4: at the limit or after go-away, open_stream raises and changes nothing."""
        event("open refused at the limit or after go-away")
        before = self.server.open_streams
        with pytest.raises(LocalProtocolError):
            self.server.open_stream(method="GET", path="/")
        assert self.server.open_streams == before
        assert self.server.data_to_send() == []

    # ------------------------------------------------------------ heads

    def client_streams_awaiting_head(self) -> list[int]:
        return [
            sid
            for sid, model in self.streams.items()
            if self.client.is_open(sid) and not model.client_final_head
        ]

    @precondition(lambda self: self.client_streams_awaiting_head())
    @rule(data=st.data())
    def send_response(self, data: st.DataObject) -> None:
        stream_id = data.draw(st.sampled_from(self.client_streams_awaiting_head()))
        model = self.streams[stream_id]
        if model.kind is StreamKind.WEBSOCKET:
            status = data.draw(st.sampled_from([101, 101, 403]))
        else:
            status = data.draw(st.sampled_from([103, 200, 204, 404, 500]))
        end_stream = status not in (101, 103) and data.draw(st.booleans())
        headers = [("set-cookie", "a=1"), ("set-cookie", "b=2"), ("x-empty", "")]
        self.client.send_response(stream_id, status, headers, end_stream=end_stream)
        self.flush(CLIENT)
        self.expect(
            CLIENT,
            stream_id,
            Response(
                stream_id=stream_id,
                status=status,
                headers=tuple(headers),
                end_stream=end_stream,
            ),
        )
        if status != 103:
            model.client_final_head = True
            model.client_accepted_websocket = status == 101
            model.response.ended = end_stream
        self.pump(data)

    # ------------------------------------------------------------ bodies

    def can_send(self, role: Role, model: StreamModel) -> bool:
        conn = self.conn(role)
        if not conn.is_open(model.stream_id):
            return False
        if role is SERVER:
            if model.kind is StreamKind.WEBSOCKET:
                return model.server_saw_websocket
            return not model.request.ended
        if not model.client_final_head:
            return False
        if model.client_accepted_websocket:
            return True
        return not model.response.ended

    def senders(self, role: Role) -> list[int]:
        return [sid for sid, m in self.streams.items() if self.can_send(role, m)]

    def check_over_window_refused(self, role: Role, stream_id: int) -> None:
        """FC-3/FC-6: a send past the window (or max_frame_size) raises and changes nothing."""
        conn = self.conn(role)
        window = conn.send_window(stream_id)
        chunk = payload_bytes(0, 0, window + 1)
        if self.streams[stream_id].websocket_at(role):
            with pytest.raises(LocalProtocolError):
                conn.send_websocket_data(stream_id, chunk, text=False)
        else:
            with pytest.raises(LocalProtocolError):
                conn.send_data(stream_id, chunk)
        assert conn.send_window(stream_id) == window
        assert conn.data_to_send() == []
        event("send past the window refused")

    def send_chunk(self, role: Role, data: st.DataObject) -> None:
        conn = self.conn(role)
        stream_id = data.draw(st.sampled_from(self.senders(role)))
        model = self.streams[stream_id]
        if data.draw(st.booleans()):
            self.check_over_window_refused(role, stream_id)
        window = conn.send_window(stream_id)
        assert window >= 0
        websocket = model.websocket_at(role)
        cap = min(window, conn.max_data_size)
        size = data.draw(st.one_of(st.just(cap), st.integers(0, cap)))
        if size == window:
            event("send window exhausted")
        chunk = payload_bytes(stream_id, model.offsets[role], size)
        model.offsets[role] += size
        direction = model.direction_from(role)
        message: Message
        if websocket:
            # WS-6: a message keeps the kind of its first fragment.
            ongoing = self.ws_message_kind.get((role, stream_id))
            text = data.draw(st.booleans()) if ongoing is None else ongoing
            fin = data.draw(st.booleans())
            self.ws_message_kind[(role, stream_id)] = None if fin else text
            conn.send_websocket_data(stream_id, chunk, text=text, fin=fin)
            message = WebSocketData(stream_id, chunk, text=text, fin=fin)
        else:
            end_stream = data.draw(st.booleans())
            conn.send_data(stream_id, chunk, end_stream=end_stream)
            message = Data(stream_id, chunk, end_stream)
            direction.ended = end_stream
        direction.sent_bytes += size
        if conn.is_open(stream_id):  # ending the last open direction forgets the stream
            assert conn.send_window(stream_id) == window - size
        self.flush(role)
        self.expect(role, stream_id, message)
        self.pump(data)

    @precondition(lambda self: self.senders(SERVER) or self.senders(CLIENT))
    @rule(data=st.data())
    def send_body(self, data: st.DataObject) -> None:
        roles = [r for r in (SERVER, CLIENT) if self.senders(r)]
        self.send_chunk(data.draw(st.sampled_from(roles)), data)

    # ------------------------------------------------------------ acknowledging

    def accepting(self, receiver: Role, model: StreamModel) -> bool:
        """Whether ``receiver`` still takes data (and returns credit) on this stream."""
        direction = model.response if receiver is SERVER else model.request
        return self.conn(receiver).is_open(model.stream_id) and (
            model.websocket_at(receiver) or not end_delivered(direction)
        )

    def unacknowledged(self, role: Role) -> list[int]:
        """Streams on which ``role`` received bytes its application has not acknowledged."""
        result = []
        for sid, model in self.streams.items():
            direction = model.response if role is SERVER else model.request
            if self.conn(role).is_open(sid) and direction.received_bytes > direction.acked:
                result.append(sid)
        return result

    @precondition(lambda self: self.unacknowledged(SERVER) or self.unacknowledged(CLIENT))
    @rule(data=st.data())
    def acknowledge(self, data: st.DataObject) -> None:
        roles = [r for r in (SERVER, CLIENT) if self.unacknowledged(r)]
        self.acknowledge_some(data.draw(st.sampled_from(roles)), data)
        self.pump(data)

    def acknowledge_some(self, role: Role, data: st.DataObject) -> None:
        stream_id = data.draw(st.sampled_from(self.unacknowledged(role)))
        model = self.streams[stream_id]
        direction = model.response if role is SERVER else model.request
        pending = direction.received_bytes - direction.acked
        if self.accepting(role, model) and data.draw(st.booleans()):
            # FC-4: acknowledging more than was received is refused and changes nothing.
            with pytest.raises(LocalProtocolError):
                self.conn(role).acknowledge(stream_id, pending + 1)
            assert self.conn(role).data_to_send() == []
        size = data.draw(st.one_of(st.just(pending), st.integers(1, pending)))
        if self.accepting(role, model):
            direction.acked_effective += size
        self.conn(role).acknowledge(stream_id, size)
        direction.acked += size
        event(f"acknowledged on the {role.value} side")
        self.flush(role)

    # ------------------------------------------------------------ resets and closes

    def live(self, role: Role) -> list[int]:
        return [sid for sid in self.streams if self.conn(role).is_open(sid)]

    @precondition(lambda self: self.live(SERVER) or self.live(CLIENT))
    @rule(
        data=st.data(),
        code=st.sampled_from(ResetCode),
        close_code=st.sampled_from([1000, 1001, 1011, 4000, 4999]),
    )
    def terminate(self, data: st.DataObject, code: ResetCode, close_code: int) -> None:
        """Reset a stream, or close an accepted WebSocket stream (ST-7, WS-4)."""
        roles = [r for r in (SERVER, CLIENT) if self.live(r)]
        role = data.draw(st.sampled_from(roles))
        stream_id = data.draw(st.sampled_from(self.live(role)))
        message: Message
        if self.streams[stream_id].websocket_at(role) and data.draw(st.booleans()):
            self.conn(role).send_websocket_close(stream_id, close_code, "bye")
            message = WebSocketClose(stream_id=stream_id, code=close_code, reason="bye")
            event("websocket closed")
        else:
            self.conn(role).reset_stream(stream_id, code, "test")
            message = Reset(stream_id=stream_id, code=code, message="test")
        assert not self.conn(role).is_open(stream_id)
        self.flush(role)
        self.expect(role, stream_id, message)
        self.streams[stream_id].direction_from(role).ended = True
        self.streams[stream_id].terminated = True
        self.pump(data)

    # ------------------------------------------------------------ liveness

    @precondition(lambda self: len(self.pings_sent[SERVER]) + len(self.pings_sent[CLIENT]) < 3)
    @rule(role=st.sampled_from([SERVER, CLIENT]), ping_id=st.integers(0, 2**63 - 1))
    def ping(self, role: Role, ping_id: int) -> None:
        self.conn(role).send_ping(ping_id)
        self.pings_sent[role].append(ping_id)
        self.flush(role)

    @precondition(lambda self: not self.server.goaway_sent and len(self.streams) >= 5)
    @rule()
    def server_goaway(self) -> None:
        self.server.send_goaway()
        event("go-away")
        assert not self.server.can_open_stream
        self.flush(SERVER)

    # ------------------------------------------------------------ invariants

    @invariant()
    def concurrency_limit_is_never_exceeded(self) -> None:
        limit = self.client.local_limits.max_concurrent_streams
        assert self.server.open_streams <= limit
        assert self.client.open_streams <= limit

    @invariant()
    def windows_match_the_credit_granted(self) -> None:
        for sid, model in self.streams.items():
            for sender, direction in ((SERVER, model.request), (CLIENT, model.response)):
                receiver = CLIENT if sender is SERVER else SERVER
                initial = self.initial_window_towards(receiver)
                # FC-6: the sender never spent more than the receiver ever granted.
                assert direction.sent_bytes <= initial + direction.granted
                # FC-4: credit only for consumed bytes.
                assert direction.granted <= direction.acked <= direction.received_bytes
                if self.conn(sender).is_open(sid):
                    window = self.conn(sender).send_window(sid)
                    assert window >= 0
                    assert window == initial + direction.granted_delivered - direction.sent_bytes

    @invariant()
    def credit_comes_back(self) -> None:
        """FC-4: consumed bytes are returned in batches, and flow control never deadlocks."""
        for model in self.streams.values():
            for sender, direction in ((SERVER, model.request), (CLIENT, model.response)):
                receiver = CLIENT if sender is SERVER else SERVER
                if not self.accepting(receiver, model):
                    continue
                initial = self.initial_window_towards(receiver)
                assert direction.granted <= direction.acked_effective
                # Credit is held back only while it is under half the initial window.
                assert direction.acked_effective - direction.granted < max(initial // 2, 1)
                if initial + direction.granted - direction.received_bytes == 0:
                    # The peer's window is exhausted: no credit may be held back.
                    assert direction.acked_effective == direction.granted
                if direction.received_bytes == direction.acked and not direction.ended:
                    # Everything received was consumed: the sender must be able to send
                    # again once the updates in flight arrive.
                    assert initial + direction.granted - direction.received_bytes > 0

    @invariant()
    def honest_peers_stay_connected(self) -> None:
        assert self.server.state is ConnectionState.OPEN
        assert self.client.state is ConnectionState.OPEN

    def teardown(self) -> None:
        # Drain both directions completely; everything sent must arrive.
        for _ in range(1000):
            if not self.queues[SERVER] and not self.queues[CLIENT]:
                break
            self.deliver(SERVER, len(self.queues[SERVER]))
            self.deliver(CLIENT, len(self.queues[CLIENT]))
        assert not self.queues[SERVER]
        assert not self.queues[CLIENT]
        for model in self.streams.values():
            assert model.request.delivered == len(model.request.expected)
            assert model.response.delivered == len(model.response.expected)
            if model.terminated or (model.request.ended and model.response.ended):
                # ST-10: both directions ended (or reset/closed): gone on both sides.
                assert not self.server.is_open(model.stream_id)
                assert not self.client.is_open(model.stream_id)
        # LV-1: every ping was answered with a pong of the same id, in order.
        assert self.pongs_seen[SERVER] == self.pings_sent[SERVER]
        assert self.pongs_seen[CLIENT] == self.pings_sent[CLIENT]


TunnelMachine.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_tunnel_state_machine = TunnelMachine.TestCase
