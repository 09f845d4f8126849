"""A transport that gathers the writes of one event-loop turn into one system call.

uvicorn writes a response head and its body as two ``transport.write`` calls. On
loopback a ``send`` costs as much as a good part of the Python around it (the kernel
runs the receiver's TCP input in the sender's call), so a small relayed response
paid for two sends to its caller.

:class:`CorkedTransport` queues writes and sends them with one ``writelines`` (a
single ``writev`` on uvloop) from a callback scheduled for the end of the current
loop turn: nothing waits longer than the code that is already running, bytes keep
their order, and ``close``/``write_eof`` send what is queued first. The queue holds
only what was written since the last callback, so it adds no unbounded buffering;
backpressure (``pause_writing``) still comes from the real transport.

It serves the public HTTP connections only. A tunnel WebSocket writes through: there,
holding the opens of a turn for one write saved CPU but cost throughput, because the
client sat idle until the batch arrived. Measured with ``benchmarks/ab_tunnel.py`` at
concurrency 64 (6 rounds): corking everything gave 6% fewer requests per second than
corking nothing; corking only the callers' connections gave 7% more.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

__all__ = ["CorkedTransport"]


class CorkedTransport(asyncio.Transport):
    """Wraps ``transport``; see the module docstring."""

    def __init__(self, transport: asyncio.Transport) -> None:
        super().__init__()
        self._transport = transport
        self._loop = asyncio.get_running_loop()
        self._queued: list[bytes | bytearray | memoryview] = []
        self._queued_bytes = 0

    @property
    def wrapped(self) -> asyncio.Transport:
        """The transport underneath."""
        return self._transport

    # ------------------------------------------------------------ writing

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._queued:
            self._loop.call_soon(self.flush)
        self._queued.append(data)
        self._queued_bytes += len(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Send what is queued now (the end-of-turn callback; harmless when empty)."""
        queued = self._queued
        if not queued:
            return
        self._queued = []
        self._queued_bytes = 0
        if self._transport.is_closing():
            return  # the real transport would only log a warning per write
        if len(queued) == 1:
            self._transport.write(queued[0])
        else:
            self._transport.writelines(queued)

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._queued_bytes + self._transport.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    # ------------------------------------------------------------ closing

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._queued = []
        self._queued_bytes = 0
        self._transport.abort()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    # ------------------------------------------------------------ the rest, delegated

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()
