"""CorkedTransport: the writes of one loop turn leave in one system call, in order."""

from __future__ import annotations

import asyncio
from typing import Any

from pipegate_server._cork import CorkedTransport


class RecordingTransport(asyncio.Transport):
    """Records what reaches the socket layer."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[bytes]] = []
        self.events: list[str] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.calls.append([bytes(data)])

    def writelines(self, list_of_data: Any) -> None:
        self.calls.append([bytes(data) for data in list_of_data])

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.events.append("close")
        self.closing = True

    def abort(self) -> None:
        self.events.append("abort")
        self.closing = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.events.append(f"eof after {len(self.calls)} writes")

    def get_write_buffer_size(self) -> int:
        return 7

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 5)}.get(name, default)

    def pause_reading(self) -> None:
        self.events.append("pause_reading")


async def _next_turn() -> None:
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_writes_of_one_turn_leave_together_at_its_end() -> None:
    real = RecordingTransport()
    corked = CorkedTransport(real)
    corked.write(b"HTTP/1.1 200 OK\r\n\r\n")
    corked.write(b"")  # ignored
    corked.writelines([b"body", b"more"])
    assert real.calls == []
    assert corked.get_write_buffer_size() == 19 + 8 + 7
    await _next_turn()
    assert real.calls == [[b"HTTP/1.1 200 OK\r\n\r\n", b"body", b"more"]]
    corked.write(b"next turn")
    await _next_turn()
    assert real.calls[1:] == [[b"next turn"]]  # a lone write is a plain write


async def test_close_and_write_eof_send_what_is_queued_first() -> None:
    real = RecordingTransport()
    corked = CorkedTransport(real)
    corked.write(b"last")
    corked.write_eof()
    assert real.events == ["eof after 1 writes"]
    corked.write(b"bye")
    corked.close()
    assert real.calls == [[b"last"], [b"bye"]]
    assert real.events[-1] == "close"
    await _next_turn()  # the scheduled flush finds nothing left
    assert len(real.calls) == 2


async def test_abort_drops_what_is_queued() -> None:
    real = RecordingTransport()
    corked = CorkedTransport(real)
    corked.write(b"never sent")
    corked.abort()
    await _next_turn()
    assert real.calls == []
    assert real.events == ["abort"]


async def test_nothing_is_written_to_a_closing_transport() -> None:
    real = RecordingTransport()
    corked = CorkedTransport(real)
    corked.write(b"late")
    real.closing = True
    await _next_turn()
    assert real.calls == []


async def test_the_rest_is_delegated() -> None:
    real = RecordingTransport()
    corked = CorkedTransport(real)
    assert corked.wrapped is real
    assert corked.get_extra_info("peername") == ("127.0.0.1", 5)
    assert corked.get_extra_info("socket", "none") == "none"
    corked.pause_reading()
    assert real.events == ["pause_reading"]
    assert corked.can_write_eof()
