"""Every reach of the client under a library's private API, in one module: the tunnel
WebSocket as websockets' client connection with batched reads and writes.

Nothing else in the package reaches under websockets; ``--no-fast-path``
(``ClientSettings.fast_path=False``) runs the tunnel on websockets' public
``connect()``/``recv()``/``send()`` (:class:`~pipegate_client._transport.PlainTunnelConnection`)
and touches none of this. The pins in ``pyproject.toml`` stop below the first version
not tested with it.

Reaches (tested with websockets 16.0 and 17.4; 13.0-15.0 fail the fast path's
tests, and ``_websocket.py``'s ``max_size=(message, fragment)`` needs 16):

1. ``websockets.asyncio.client.ClientConnection`` (its base
   ``websockets.asyncio.connection.Connection``), subclassed by
   :class:`TunnelConnection`: overrides ``data_received``, ``process_event``,
   ``connection_lost``, ``recv`` and ``send_data``; reads ``protocol``, ``transport``,
   ``loop`` and ``paused``; calls ``send_context()`` and ``acknowledge_pings()``.
   Why: plain frames read past the library's parser into an inbox taken in one batch
   (:meth:`~TunnelConnection.receive_batch`), and several messages written in one
   system call (:meth:`~TunnelConnection.send_now`).
2. websockets' sans-I/O ``ClientProtocol`` (``self.protocol``): ``state``,
   ``max_message_size``, ``data_to_send()``, ``send_text``/``send_binary``/
   ``send_pong``/``fail`` (public); its parser state is read by
   :func:`pipegate_tunnel._internals.library_at_frame_boundary`, and websockets' C
   ``apply_mask`` is taken through ``pipegate_tunnel._internals.LIBRARY_MASK`` (both
   listed in that module, shared with the server). Why: frames may be read past the
   parser only from a frame boundary, and masked at C speed.
3. ``websockets.asyncio.client.connect.process_redirect`` (a method of the public
   ``connect`` class, not documented), overridden by :class:`connect_no_redirect` to
   return the 3xx as it came. Why: websockets follows redirects by itself, with the
   request's headers; on the local hop that let a local app point the caller's
   handshake at another local service (SSRF), and on the tunnel hop it would carry
   the token to wherever the server points. This one is used on ``--no-fast-path``
   too: it is a safety rule, not a speed-up. Checked by the tests of both hops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any, Literal, overload

from pipegate_tunnel import (
    NEED_MORE,
    NOT_PLAIN,
    OP_BINARY,
    OP_PING,
    OP_TEXT,
    MaskFunction,
    MaskSource,
    PartialFrame,
    client_frame,
    scan_server_frame,
)
from pipegate_tunnel._internals import LIBRARY_MASK, library_at_frame_boundary
from websockets import typing as ws_typing
from websockets.asyncio.client import connect
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from ._transport import GuardedClientConnection

__all__ = ["TunnelConnection", "connect_no_redirect", "library_at_frame_boundary"]

#: websockets' masking function (reach 3), typed as the frame builder expects it.
MASK: MaskFunction = LIBRARY_MASK


class connect_no_redirect(connect):
    """websockets' ``connect()`` that never follows a redirect: a 3xx answer to the
    handshake raises :class:`~websockets.exceptions.InvalidStatus`, as any other
    non-101 answer does (reach 3)."""

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


class TunnelConnection(GuardedClientConnection):
    """The tunnel WebSocket, able to send several messages in one socket write and to
    hand over every message received since the last look in one batch.

    A small response is a head and a body frame: written together, they cost one
    system call instead of two and wake the server once (the connection is created by
    ``connect(..., create_connection=TunnelConnection)``).

    Frames of *different* streams are not held back to share a write: measured with
    ``benchmarks/ab_tunnel.py``, gathering a whole loop turn's responses into one
    write saved CPU but cost about 9% throughput at concurrency 64, because the
    server then sat idle until the batch arrived instead of working in parallel.

    Receiving: from the first frame after the handshake (when the library's parser
    provably waits between frames), plain frames are read here
    (:func:`pipegate_tunnel.scan_server_frame`) into an inbox that
    :meth:`receive_batch` empties. The first frame that is not plain (a close, a
    fragment, a bad frame) and everything after it goes to the library, whose
    messages keep their place in the inbox as a marker taken with ``recv()``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._masks = MaskSource()
        #: Messages not yet taken, in order; None stands for one the library holds.
        self._inbox: list[str | bytes | None] = []
        self._inbox_waiter: asyncio.Future[None] | None = None
        self._inbox_paused = False
        self._lost = False
        #: None until the first data after the handshake; then True while frames are
        #: read here, False once the library reads them (for good).
        self._fast: bool | None = None
        #: The start of a plain frame that did not arrive whole: its pieces, their
        #: total size and the size of the whole frame (or of its header).
        self._held: PartialFrame | None = None

    # ------------------------------------------------------------ receiving

    async def receive_batch(self) -> list[str | bytes]:
        """Wait for messages, then take all that arrived, in order (str for text,
        bytes for binary). Raises :class:`ConnectionClosed`, as ``recv()`` does, once
        the connection is closed and every message was taken."""
        if not await self._wait_for_inbox():
            return [await super().recv()]  # raises ConnectionClosed
        inbox, self._inbox = self._inbox, []
        self._resume_inbox()
        if None not in inbox:
            return inbox  # type: ignore[return-value]  # no None in it
        batch: list[str | bytes] = []
        for message in inbox:
            # Not in a comprehension: super() needs this method's own frame.
            batch.append(await super().recv() if message is None else message)
        return batch

    @overload
    async def recv(self, decode: Literal[True]) -> str: ...

    @overload
    async def recv(self, decode: Literal[False]) -> bytes: ...

    @overload
    async def recv(self, decode: bool | None = None) -> ws_typing.Data: ...

    async def recv(self, decode: bool | None = None) -> ws_typing.Data:
        """The library's ``recv()`` (and so ``async for``), reading the inbox."""
        if not await self._wait_for_inbox():
            return await super().recv(decode)
        message = self._inbox.pop(0)
        self._resume_inbox()
        if message is None:
            return await super().recv(decode)
        if decode is True and isinstance(message, bytes):
            return message.decode()
        if decode is False and isinstance(message, str):
            return message.encode()
        return message

    async def _wait_for_inbox(self) -> bool:
        """Wait until the inbox has a message (True) or the connection is lost (False)."""
        while not self._inbox:
            if self._lost:
                return False
            waiter = self._inbox_waiter = self.loop.create_future()
            try:
                await waiter
            finally:
                self._inbox_waiter = None
        return True

    def _resume_inbox(self) -> None:
        if self._inbox_paused and len(self._inbox) <= _INBOX_HIGH_WATER:
            self._inbox_paused = False
            if not self.backlog_paused:
                self.transport.resume_reading()

    def may_read(self) -> bool:
        return not self._inbox_paused

    def data_received(self, data: bytes) -> None:
        if self._fast is None and self.protocol.state is State.OPEN:
            self._fast = library_at_frame_boundary(self.protocol)
        if not self._fast:
            super().data_received(data)
            return
        held = self._held
        if held is not None:
            whole = held.add(data)
            if whole is None:
                return
            self._held = None
            data = whole
        rest = self._read_frames(data)
        if rest is not None:
            self._fast = False
            super().data_received(data[rest:])  # checks the backlog itself
        elif self.writes_paused:  # pongs the server does not read (GuardedClientConnection)
            self.check_backlog()
        self._wake_reader()

    def _read_frames(self, data: bytes) -> int | None:
        """Put the plain frames of ``data`` in the inbox; the offset from which the
        library must read the rest, if any."""
        protocol = self.protocol
        max_size = protocol.max_message_size or _NO_LIMIT
        inbox = self._inbox
        pos, size = 0, len(data)
        while pos < size:
            if protocol.state is not State.OPEN:
                return pos
            opcode, start, end = scan_server_frame(data, pos, max_size)
            if opcode == NEED_MORE:
                self._held = PartialFrame(data[pos:], end)
                return None
            if opcode == NOT_PLAIN:
                return pos
            pos = end
            if opcode == OP_BINARY:
                inbox.append(data[start:end])
            elif opcode == OP_TEXT:
                try:
                    inbox.append(data[start:end].decode())
                except UnicodeDecodeError:
                    protocol.fail(1007, "invalid UTF-8 in a text message")  # invalid data
                    self.send_data()
                    return pos
            elif opcode == OP_PING:
                protocol.send_pong(data[start:end])
                self.send_data()
            else:
                self.acknowledge_pings(data[start:end])
        return None

    def process_event(self, event: Any) -> None:
        super().process_event(event)
        if isinstance(event, Frame) and event.fin and event.opcode in _DATA_OPCODES:
            self._inbox.append(None)  # a whole message, in the library's hands
            self._wake_reader()

    def _wake_reader(self) -> None:
        if not self._inbox:
            return
        waiter = self._inbox_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if len(self._inbox) > _INBOX_HIGH_WATER and not self._inbox_paused:
            self._inbox_paused = True
            self.transport.pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._lost = True
        waiter = self._inbox_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ------------------------------------------------------------ sending

    async def send_many(self, messages: Sequence[str | bytes]) -> None:
        """Send ``messages`` in order (str as text, bytes as binary), in one write when
        :meth:`send_now` can; otherwise (closing, closed, paused for backpressure) by
        the library's path, which waits or raises :class:`ConnectionClosed` as it
        should."""
        if self.send_now(messages):
            return
        async with self.send_context():
            protocol = self.protocol
            for message in messages:
                if isinstance(message, str):
                    protocol.send_text(message.encode())
                else:
                    protocol.send_binary(message)

    def send_now(self, messages: Sequence[str | bytes]) -> bool:
        """Write ``messages`` at once if the connection is open and the socket not
        backed up (True); else write nothing (False).

        The messages are framed here, a whole unfragmented frame each, which is all
        the library would do, minus its per-message bookkeeping.
        """
        if self.protocol.state is not State.OPEN or self.paused:
            return False
        take = self._masks.take
        frames = [
            client_frame(OP_TEXT, message.encode(), take(), MASK)
            if isinstance(message, str)
            else client_frame(OP_BINARY, message, take(), MASK)
            for message in messages
        ]
        if len(frames) == 1:
            self.transport.write(frames[0])
        else:
            self.transport.writelines(frames)
        return True

    def send_data(self) -> None:
        """Write what the protocol produced: frames in one ``writelines`` (a single
        writev on uvloop), then the half-close an empty item asks for, as the library
        does it."""
        writes = self.protocol.data_to_send()
        frames = [data for data in writes if data]
        if len(frames) > 1:
            self.transport.writelines(frames)
        elif frames:
            self.transport.write(frames[0])
        if len(frames) < len(writes):
            if self.transport.can_write_eof():
                with contextlib.suppress(Exception):  # uvloop may raise RuntimeError
                    self.transport.write_eof()
            else:  # pragma: no cover - TLS
                self.transport.close()


#: The frame size limit when the library has none.
_NO_LIMIT = 2**63
_DATA_OPCODES = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)
#: Messages waiting in the inbox above which reading pauses until the reader took them.
_INBOX_HIGH_WATER = 64
