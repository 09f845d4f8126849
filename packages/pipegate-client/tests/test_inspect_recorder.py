"""The inspector's recorder alone: its memory bound (count, per-body cap, total cap,
WebSocket messages), with hand-made channels and no network."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from pipegate_client._inspect import Recorder
from pipegate_client._inspect._recorder import MAX_MESSAGES
from pipegate_client._stream import LocalStream
from pipegate_protocol import Open, StreamKind
from pipegate_tunnel import TunnelShell


@pytest.fixture
def shell() -> Iterator[TunnelShell]:
    loop = asyncio.new_event_loop()
    fake = object.__new__(TunnelShell)
    fake.loop = loop
    fake.observer = None
    try:
        yield fake
    finally:
        loop.close()


_ids = iter(range(1, 1_000_000, 2))


def stream(shell: TunnelShell, path: str = "/x", *, websocket: bool = False) -> LocalStream:
    kind = StreamKind.WEBSOCKET if websocket else StreamKind.HTTP
    message = Open(stream_id=next(_ids), method="GET", path=path, kind=kind, end_stream=True)
    return LocalStream(shell, message)


def finish(recorder: Recorder, channel: LocalStream) -> None:
    channel.ended_at = channel.opened_at + 0.001
    recorder.stream_ended(channel)


def test_a_body_is_kept_up_to_the_cap_and_counted_whole(shell: TunnelShell) -> None:
    recorder = Recorder(body_cap=10, clock=shell.loop.time)
    channel = stream(shell)
    recorder.stream_opened(channel)
    recorder.body(channel, b"0123456", sent=True)
    recorder.body(channel, b"789abcdef", sent=True)
    recorder.body(channel, b"more", sent=True)
    (exchange,) = recorder
    assert bytes(exchange.response_body.data) == b"0123456789"
    assert exchange.response_body.size == 20
    assert exchange.response_body.truncated
    assert recorder.captured == 10


def test_the_count_bound_evicts_the_oldest_and_releases_its_bytes(shell: TunnelShell) -> None:
    recorder = Recorder(max_exchanges=3, clock=shell.loop.time)
    for index in range(5):
        channel = stream(shell, f"/{index}")
        recorder.stream_opened(channel)
        recorder.body(channel, b"x" * 100, sent=True)
        finish(recorder, channel)
    assert [exchange.path for exchange in recorder] == ["/2", "/3", "/4"]
    assert recorder.get(1) is None
    assert recorder.get(2) is None
    assert recorder.captured == 300


def test_the_total_cap_evicts_finished_exchanges_but_never_the_one_capturing(
    shell: TunnelShell,
) -> None:
    recorder = Recorder(body_cap=100, total_cap=250, clock=shell.loop.time)
    first, second = stream(shell, "/a"), stream(shell, "/b")
    recorder.stream_opened(first)
    recorder.body(first, b"a" * 100, sent=True)
    recorder.stream_opened(second)
    recorder.body(second, b"b" * 100, sent=True)
    # Neither is finished: the third body is kept only up to what is left of the cap.
    third = stream(shell, "/c")
    recorder.stream_opened(third)
    recorder.body(third, b"c" * 100, sent=True)
    assert recorder.captured == 250
    assert len(list(recorder)[2].response_body.data) == 50
    # Once the oldest is finished, a new body may evict it.
    finish(recorder, first)
    fourth = stream(shell, "/d")
    recorder.stream_opened(fourth)
    recorder.body(fourth, b"d" * 100, sent=True)
    assert [exchange.path for exchange in recorder] == ["/b", "/c", "/d"]
    assert recorder.captured == 250
    assert recorder.captured <= recorder.total_cap


def test_an_exchange_evicted_while_live_lets_its_bytes_go_and_keeps_counting(
    shell: TunnelShell,
) -> None:
    recorder = Recorder(max_exchanges=1, clock=shell.loop.time)
    live = stream(shell, "/live")
    recorder.stream_opened(live)
    recorder.body(live, b"x" * 100, sent=False)
    (exchange,) = recorder
    recorder.stream_opened(stream(shell, "/next"))  # evicts the live one
    recorder.body(live, b"y" * 100, sent=False)
    finish(recorder, live)
    assert exchange.evicted
    assert exchange.request_body.data == b""
    assert exchange.request_body.size == 200
    assert recorder.captured == 0


def test_websocket_messages_are_assembled_from_fragments_and_the_oldest_dropped(
    shell: TunnelShell,
) -> None:
    recorder = Recorder(clock=shell.loop.time)
    channel = stream(shell, "/ws", websocket=True)
    recorder.stream_opened(channel)
    recorder.websocket_message(channel, b"he", sent=False, text=True, fin=False)
    recorder.websocket_message(channel, b"\x01", sent=True, text=False, fin=True)
    recorder.websocket_message(channel, b"llo", sent=False, text=True, fin=True)
    (exchange,) = recorder
    assert [(m.sent, m.text, bytes(m.body.data), m.complete) for m in exchange.messages] == [
        (False, True, b"hello", True),
        (True, False, b"\x01", True),
    ]
    for index in range(MAX_MESSAGES):
        recorder.websocket_message(channel, b"%d" % index, sent=True, text=True, fin=True)
    assert len(exchange.messages) == MAX_MESSAGES
    assert exchange.dropped_messages == 2
    assert recorder.captured == sum(len(m.body.data) for m in exchange.messages)
    recorder.websocket_close(channel, 1000, "done", sent=True)
    assert exchange.closes == ((True, 1000, "done"),)


def test_listeners_are_woken_by_each_change(shell: TunnelShell) -> None:
    recorder = Recorder(clock=shell.loop.time)
    event = recorder.listen()
    channel = stream(shell)
    recorder.stream_opened(channel)
    assert event.is_set()
    event.clear()
    recorder.body(channel, b"body pieces alone do not wake anyone", sent=True)
    assert not event.is_set()
    finish(recorder, channel)
    assert event.is_set()
    recorder.unlisten(event)
    event.clear()
    recorder.stream_opened(stream(shell))
    assert not event.is_set()


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="max_exchanges"):
        Recorder(max_exchanges=0)
