"""HTTP/1.1 on the wire: request heads out, response heads and bodies in.

This module owns the bytes and the httptools glue, and nothing about sockets:

* :func:`encode_request_head` turns method, target and headers into exact bytes
  (each character one byte, latin-1) and refuses what HTTP/1.1 cannot carry;
* :class:`ResponseParsing` holds the llhttp (``httptools``) callbacks. It is a base of
  :class:`~._http1_connection.HTTP1Connection`, so the parser calls straight into the
  connection with no object in between, as it did before the split; the block under
  ``TYPE_CHECKING`` lists what the connection provides to it;
* :class:`HTTP1Response` is a response whose final head arrived, with its body buffer.

What callers may rely on:

* A response is delivered once its final head arrived; interim 1xx heads are skipped,
  a 101 or an answer to HEAD is delivered with no body and closes the connection.
* Body bytes wait in the response; reading from the socket pauses while more than
  :data:`BUFFER_HIGH_WATER` of them wait and resumes at :data:`BUFFER_LOW_WATER`.
* A response head larger than :data:`MAX_RESPONSE_HEAD`, or a second response to one
  request, raises :class:`LocalResponseError` out of the parser; the connection turns
  it into the failure of the exchange (see :func:`~._http1_errors.parse_error`).
"""

from __future__ import annotations

import asyncio
import re
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

from .errors import LocalRequestError, LocalResponseError

if TYPE_CHECKING:
    import httptools

__all__ = [
    "BUFFER_HIGH_WATER",
    "BUFFER_LOW_WATER",
    "MAX_RESPONSE_HEAD",
    "HTTP1Response",
    "ResponseParsing",
    "encode_request_head",
]

#: Response body bytes buffered ahead of the consumer before reading pauses.
BUFFER_HIGH_WATER: Final = 256 * 1024
#: Reading resumes once the consumer brought the buffer down to this.
BUFFER_LOW_WATER: Final = 64 * 1024
#: Largest response head (status line and headers) accepted from the origin.
MAX_RESPONSE_HEAD: Final = 256 * 1024

#: Methods that get ``Content-Length: 0`` when they have no body and the caller sent no
#: length (what aiohttp did; a body-less POST is then unambiguous for every server).
_NO_LENGTH_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})

_TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
#: A whole well-formed head, matched in one pass: token method, a target without
#: controls or spaces, token names, values of visible bytes, SP and HTAB (RFC 9112).
_HEAD = re.compile(
    rf"{_TCHAR}+ [^\x00-\x20\x7f]+ HTTP/1\.1\r\n"
    rf"(?:{_TCHAR}+: [\t\x20-\x7e\x80-\xff]*\r\n)*\r\n"
)
_TOKEN = re.compile(rf"{_TCHAR}+")
_TARGET = re.compile(r"[^\x00-\x20\x7f]+")
_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")
_DIGITS = re.compile(r"[0-9]+")


# ---------------------------------------------------------------------- heads


def encode_request_head(
    method: str,
    target: str,
    host: str,
    headers: Sequence[tuple[str, str]],
    *,
    has_body: bool,
) -> tuple[bytes, int | None]:
    """The request head as bytes, and the body length it declares (``None``: chunked).

    ``Host`` comes first, then ``headers`` in order with duplicates, then the framing
    header this client adds: ``Transfer-Encoding: chunked`` for a body without a
    ``Content-Length``, ``Content-Length: 0`` for a body-less request whose method
    usually has one. Every character is written as one byte (latin-1). Raises
    :class:`LocalRequestError` for anything HTTP/1.1 cannot carry: CR, LF or NUL in a
    field, a method or name that is not a token, a character above U+00FF, an invalid
    or contradictory ``Content-Length``, or a length on a request without a body.
    """
    parts = [method, " ", target, " HTTP/1.1\r\nHost: ", host, "\r\n"]
    lengths: list[str] | None = None
    for name, value in headers:
        parts += (name, ": ", value, "\r\n")
        if len(name) == 14 and name.lower() == "content-length":
            lengths = [value] if lengths is None else [*lengths, value]
    # Request line, Host, the headers, the empty line: one line feed each.
    lines = len(headers) + 3
    declared: int | None = None
    if lengths is not None:
        declared = _declared_length(lengths)
        if not has_body and declared:
            raise LocalRequestError(
                f"the request declares Content-Length {declared} but has no body"
            )
    elif has_body:
        parts.append("Transfer-Encoding: chunked\r\n")
        lines += 1
    elif method not in _NO_LENGTH_METHODS:
        parts.append("Content-Length: 0\r\n")
        lines += 1
    parts.append("\r\n")
    head = "".join(parts)
    # The pattern checks the structure in one pass; the line count proves that no
    # field carried a line break of its own (a value "a\r\nX: y" fits the pattern).
    if _HEAD.fullmatch(head) is None or head.count("\n") != lines:
        _explain_bad_head(method, target, host, headers)
    try:
        return head.encode("latin-1"), declared
    except UnicodeEncodeError as exc:
        raise LocalRequestError(
            f"the request head has a character above U+00FF at offset {exc.start}"
        ) from None


def _declared_length(values: list[str]) -> int:
    stripped = {value.strip(" \t") for value in values}
    if len(stripped) != 1:
        raise LocalRequestError("the request has contradictory Content-Length headers")
    (value,) = stripped
    if _DIGITS.fullmatch(value) is None:
        raise LocalRequestError(f"the request has an invalid Content-Length: {value[:40]!r}")
    return int(value)


def _explain_bad_head(
    method: str, target: str, host: str, headers: Sequence[tuple[str, str]]
) -> None:
    """Raise the precise :class:`LocalRequestError` for a head that failed the check."""
    if _TOKEN.fullmatch(method) is None:
        raise LocalRequestError(f"the method {method[:40]!r} is not an HTTP token")
    if _TARGET.fullmatch(target) is None:
        raise LocalRequestError("the request target has a space or control character")
    for name, value in (("Host", host), *headers):
        if _TOKEN.fullmatch(name) is None:
            raise LocalRequestError(f"the header name {name[:40]!r} is not an HTTP token")
        if _VALUE.fullmatch(value) is None:
            raise LocalRequestError(
                f"the header {name[:40]!r} has a character not allowed in a field value "
                "(CR, LF, NUL or another control character, or one above U+00FF)"
            )
    raise LocalRequestError("the request head cannot be written as HTTP/1.1")  # unreachable


# ---------------------------------------------------------------------- response


class HTTP1Response:
    """A response whose final head arrived; its body is read as it comes.

    Body bytes wait in a small buffer; the connection stops reading while more than
    :data:`BUFFER_HIGH_WATER` of them wait, so a fast origin cannot fill memory
    ahead of a slow consumer. :meth:`aclose` must be called when done (an unfinished
    body closes the connection).
    """

    __slots__ = (
        "_chunks",
        "_complete",
        "_connection",
        "_error",
        "_offset",
        "_waiter",
        "buffered",
        "headers",
        "http_version",
        "status",
    )

    def __init__(
        self,
        connection: ResponseParsing,
        status: int,
        headers: list[tuple[bytes, bytes]],
        http_version: str,
    ) -> None:
        self.status = status
        #: Raw ``(name, value)`` pairs in order, duplicates kept.
        self.headers = headers
        self.http_version = http_version
        #: Body bytes received and not yet read.
        self.buffered = 0
        self._connection: ResponseParsing | None = connection
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # into _chunks[0]
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    # ------------------------------------------------------------ for the consumer

    @property
    def at_eof(self) -> bool:
        """True once the whole body arrived and was read."""
        return self._complete and not self.buffered

    def read_nowait(self, size: int) -> bytes:
        """Up to ``size`` buffered bytes, ``b""`` when none wait; raises the failure
        that ended the body once the buffer is empty."""
        if self.buffered:
            return self._take(size)
        if self._error is not None:
            raise self._error
        return b""

    async def read(self, size: int) -> bytes:
        """Up to ``size`` body bytes, waiting for some; ``b""`` at the end of the body.

        Raises :class:`LocalResponseError` when the connection broke before the end.
        """
        while not self.buffered:
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._take(size)

    async def aclose(self) -> None:
        """Done with this response: a finished exchange leaves the connection to the
        pool, anything else (body not complete, caller gave up) closes it."""
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.finish(self)

    # ------------------------------------------------------------ for the connection

    def _feed(self, data: bytes) -> None:
        if not data:
            return  # an empty piece in the deque would read as the end of the body
        self._chunks.append(data)
        self.buffered += len(data)
        self._wake()

    def _end(self, error: BaseException | None = None) -> None:
        if error is not None and not self._complete:
            self._error = error
        self._complete = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _take(self, size: int) -> bytes:
        chunks = self._chunks
        first = chunks[0]
        offset = self._offset
        available = len(first) - offset
        if available > size:
            data = first[offset : offset + size]
            self._offset = offset + size
        elif offset:
            data = first[offset:]
            chunks.popleft()
            self._offset = 0
        elif available == size or len(chunks) == 1 or available + len(chunks[1]) > size:
            data = chunks.popleft()
        else:
            pieces = [chunks.popleft()]
            total = available
            while chunks and total + len(chunks[0]) <= size:
                piece = chunks.popleft()
                pieces.append(piece)
                total += len(piece)
            data = b"".join(pieces)
        self.buffered -= len(data)
        connection = self._connection
        if connection is not None and self.buffered <= BUFFER_LOW_WATER:
            connection.consumer_caught_up()
        return data


# ---------------------------------------------------------------------- parser callbacks


class ResponseParsing:
    """The callbacks ``httptools.HttpResponseParser`` makes while it parses a response.

    A base of the connection, which creates the parser with itself as the callback
    object and feeds it. The callbacks build the :class:`HTTP1Response`, hand it over
    with ``_deliver`` once its final head arrived, feed it the body, and report the end
    of the message with ``_exchange_done``. A response is expected only while a request
    waits for its head (``_head_waiter`` set, i.e. the connection is ``ACTIVE``) and
    until its message completed; anything else is a protocol error.
    """

    if TYPE_CHECKING:
        # What HTTP1Connection provides: its exchange's fields and these methods.
        transport: asyncio.Transport | None
        _parser: httptools.HttpResponseParser
        _head_waiter: asyncio.Future[HTTP1Response] | None
        _response: HTTP1Response | None
        _head_request: bool
        _headers: list[tuple[bytes, bytes]]
        _head_size: int
        _until_eof: bool
        _message_complete: bool
        _reading_paused: bool

        def _deliver(self, response: HTTP1Response) -> None: ...
        def _exchange_done(self) -> None: ...
        def close(self) -> None: ...
        def consumer_caught_up(self) -> None: ...
        async def finish(self, response: HTTP1Response) -> None: ...

    def on_message_begin(self) -> None:
        if self._message_complete or self._head_waiter is None:
            raise LocalResponseError("it sent more than one response to a request")
        self._headers = []
        self._head_size = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_RESPONSE_HEAD:
            raise LocalResponseError(f"its response head exceeds {MAX_RESPONSE_HEAD} bytes")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = parser.get_status_code()
        if status < 200 and status != 101:
            return  # interim (100 Continue, 103 Early Hints): wait for the final head
        response = HTTP1Response(self, status, self._headers, parser.get_http_version())
        self._response = response
        self._headers = []  # trailers of a chunked body, if any, are not kept
        if status == 101 or self._head_request:
            # No body follows: a HEAD answer (llhttp would wait for one), or a 101 on
            # a plain request, which the caller refuses. The connection is not reused.
            self._message_complete = True
            response._end()
            self._deliver(response)
            self.close()
            return
        chunked = False
        has_length = False
        for name, value in response.headers:
            if len(name) == 14 and name.lower() == b"content-length":
                has_length = True
            elif len(name) == 17 and name.lower() == b"transfer-encoding":
                chunked = value.rsplit(b",", 1)[-1].strip(b" \t").lower() == b"chunked"
        self._until_eof = not chunked and not has_length and status not in (204, 304)
        self._deliver(response)

    def on_body(self, body: bytes) -> None:
        response = self._response
        if response is None or self._message_complete:
            return  # no body for interim responses and after HEAD or 101
        response._feed(body)
        if response.buffered > BUFFER_HIGH_WATER and not self._reading_paused:
            self._reading_paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def on_message_complete(self) -> None:
        response = self._response
        if response is None or self._message_complete:
            return  # the end of an interim response; the final one follows
        self._message_complete = True
        response._end()
        self._exchange_done()
