"""A small HTTP/1.1 client for the client's calls to its one local app: the entry.

The client needs little of an HTTP client: keep-alive HTTP/1.1 to a single origin,
requests written byte for byte as the caller sent them, and bodies streamed both ways
with backpressure. A general client (aiohttp) spent about as much CPU per small
request as the rest of the relay; this one writes a head with one ``transport.write``
and parses the answer with llhttp (``httptools``), calling back into Python only for
the head, the body pieces and the end of the message.

The rest of the package imports from here; the work is split as httpcore splits it:

* :mod:`._http1_pool` — :class:`HTTP1Pool`: which connection serves a request, limits,
  waiters, the one retry of the keep-alive race;
* :mod:`._http1_connection` — :class:`HTTP1Connection`: one connection, opening it
  (TCP, TLS), its :class:`ConnectionState` (``NEW``, ``IDLE``, ``ACTIVE``, ``CLOSED``),
  one exchange at a time; :class:`Origin`, where it connects;
* :mod:`._http1_wire` — the bytes: :func:`encode_request_head`, the httptools
  callbacks, :class:`HTTP1Response` and its body buffer;
* :mod:`._http1_errors` — the one boundary where socket, TLS and parser exceptions
  become typed errors, by type and errno; :func:`describe_failure`.

What the caller may rely on:

* A response is returned once its final head arrived (interim 1xx responses are
  skipped; 101 is returned, with no body, for the caller to refuse). Its body is then
  read with :meth:`HTTP1Response.read`; reading stops (``pause_reading``) while more
  than :data:`BUFFER_HIGH_WATER` bytes wait for the consumer.
* A connection goes back to the pool only after a complete exchange: the whole request
  written, the whole response parsed, keep-alive on both sides, HTTP/1.1, and not
  a HEAD (llhttp cannot be told that a HEAD response has no body). Anything else
  (cancellation, an error, an abandoned body) closes it.
* Every failure is a :class:`~pipegate_client.errors.LocalAppError` with a one-line
  :attr:`~pipegate_client.errors.LocalAppError.reason`, of the subclass that says what
  failed (e.g. :class:`~pipegate_client.errors.LocalRefusedError`); an exception raised
  by the request body iterator itself propagates unchanged.
"""

from __future__ import annotations

from ._http1_connection import ConnectionState, HTTP1Connection, Origin
from ._http1_errors import describe_failure
from ._http1_pool import HTTP1Pool
from ._http1_wire import BUFFER_HIGH_WATER, HTTP1Response, encode_request_head

__all__ = [
    "BUFFER_HIGH_WATER",
    "ConnectionState",
    "HTTP1Connection",
    "HTTP1Pool",
    "HTTP1Response",
    "Origin",
    "describe_failure",
    "encode_request_head",
]
