"""One stream as the client's handlers (``_local``, ``_websocket``) see it.

:class:`LocalStream` is the shared :class:`~pipegate_tunnel.StreamChannel` (flow-
controlled sends, ordered delivery, failure) plus what only the client's side of a
stream needs: the server's ``open`` message, and the request body as an iterator
that returns credit only once each chunk was handed on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from pipegate_protocol import Data, Open
from pipegate_tunnel import StreamChannel, TunnelShell
from pipegate_tunnel.errors import StreamGone

__all__ = ["LocalStream", "StreamGone"]


class LocalStream(StreamChannel):
    """A stream the server opened, relayed to the local app."""

    __slots__ = ("open",)

    def __init__(self, shell: TunnelShell, open_message: Open) -> None:
        super().__init__(
            shell,
            open_message.stream_id,
            method=open_message.method,
            path=open_message.path,
            kind=open_message.kind,
        )
        #: The request head the server sent.
        self.open = open_message

    @property
    def response_started(self) -> bool:
        """True once a final response head (or a 101) was queued."""
        return self.status is not None

    async def request_body(self) -> AsyncIterator[bytes]:
        """The request body as it arrives; each chunk is acknowledged only once the
        consumer asks for the next one, i.e. after it handed the chunk on."""
        if self.open.end_stream:
            return
        while True:
            item = await self.next()
            if not isinstance(item, Data):
                raise StreamGone(f"unexpected {type(item).__name__} on an http stream")
            if item.data:
                yield item.data
                self.acknowledge(len(item.data))
            if item.end_stream:
                return

    async def discard_request_body(self, *, limit: int, seconds: float) -> bool:
        """Read and drop what is left of the request body, up to ``limit`` bytes or
        ``seconds``. True when the body ended; the caller resets the stream otherwise.

        Used after a response that did not need the whole body (a 413 or a 502): the
        server gets its credit back, so the caller can finish sending and read the
        answer, instead of seeing its upload reset."""
        if self.open.end_stream or not self.is_open:
            return True

        async def drain() -> bool:
            discarded = 0
            while True:
                item = await self.next()
                if not isinstance(item, Data):
                    return False
                if item.end_stream:
                    return True
                discarded += len(item.data)
                if discarded > limit:
                    return False
                self.acknowledge(len(item.data))

        try:
            return await asyncio.wait_for(drain(), seconds)
        except (TimeoutError, StreamGone):
            return False
