"""PipeGate client: the end of a tunnel next to a local app.

Run it with the ``pipegate-client`` command, or in-process::

    settings = ClientSettings(server_url="wss://example.com/node", client_token="...")
    client = TunnelClient(settings)
    await client.run()   # until client.stop(); reconnects by itself

Everything importable from here is public; modules starting with ``_`` are not.
"""

from ._backoff import Backoff
from ._client import TunnelClient
from ._settings import DEFAULT_LOCAL_URL, ClientSettings
from .errors import (
    AccessUnsupportedError,
    ClientError,
    ConfigurationError,
    HandshakeRefusedError,
    HostnamesUnsupportedError,
    NotATunnelEndpointError,
    TokenRefusedError,
    VersionRefusedError,
)

__all__ = [
    "DEFAULT_LOCAL_URL",
    "AccessUnsupportedError",
    "Backoff",
    "ClientError",
    "ClientSettings",
    "ConfigurationError",
    "HandshakeRefusedError",
    "HostnamesUnsupportedError",
    "NotATunnelEndpointError",
    "TokenRefusedError",
    "TunnelClient",
    "VersionRefusedError",
]
