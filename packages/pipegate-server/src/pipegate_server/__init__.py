"""PipeGate server: the public end of a tunnel.

``create_app(ServerSettings(...))`` builds the ASGI application (FastAPI); the
``pipegate-server`` command line runs it under uvicorn. Everything importable from
here is public.
"""

from ._app import Gateway, __version__, create_app
from ._settings import ServerSettings
from .errors import (
    BodyTooLargeError,
    CallerGoneError,
    ConfigurationError,
    HeadersTooLargeError,
    RelayError,
    ResponseTimeoutError,
    ServerError,
    StreamResetError,
    TokensFileError,
    TunnelBusyError,
    TunnelClosedError,
    TunnelNotFoundError,
)

__all__ = [
    "BodyTooLargeError",
    "CallerGoneError",
    "ConfigurationError",
    "Gateway",
    "HeadersTooLargeError",
    "RelayError",
    "ResponseTimeoutError",
    "ServerError",
    "ServerSettings",
    "StreamResetError",
    "TokensFileError",
    "TunnelBusyError",
    "TunnelClosedError",
    "TunnelNotFoundError",
    "__version__",
    "create_app",
]
