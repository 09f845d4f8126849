"""The request inspector (ngrok's 127.0.0.1:4040, for PipeGate): every exchange through
the tunnel, live, with replay to the local app.

* :mod:`._recorder` — the stream observer and its bounded memory (ring buffer of the
  last 200 exchanges, 64 KiB kept per body, 32 MiB in total by default);
* :mod:`._api` — the page, the JSON API and who may call it (Host and Origin checks);
* :mod:`._replay` — sending a recorded request again, as it was or edited, only to the
  local app;
* :mod:`._http` — the small HTTP/1.1 server under it (httptools);
* :mod:`._inspector` — binding the address (next free port), the tunnels recorded (one
  inspector for every tunnel of the process) and closing.

The page (``static/``) is plain HTML, CSS and JavaScript, shipped in the wheel.
"""

from __future__ import annotations

from ._inspector import (
    DEFAULT_INSPECT_ADDRESS,
    PORT_ATTEMPTS,
    InspectedTunnel,
    Inspector,
    parse_address,
)
from ._recorder import DEFAULT_BODY_CAP, DEFAULT_MAX_EXCHANGES, DEFAULT_TOTAL_CAP, Recorder

__all__ = [
    "DEFAULT_BODY_CAP",
    "DEFAULT_INSPECT_ADDRESS",
    "DEFAULT_MAX_EXCHANGES",
    "DEFAULT_TOTAL_CAP",
    "PORT_ATTEMPTS",
    "InspectedTunnel",
    "Inspector",
    "Recorder",
    "parse_address",
]
