"""``pipegate-demo``: a whole tunnel on this machine in one command.

Starts a ``pipegate-server``, a small demo app (unless ``--local-url`` names your own)
and a ``pipegate-client`` that connects them, prints the public URLs to try, and stops
everything on Ctrl-C. The processes are the real ones a deployment runs. The server
routes ``*.localhost`` by hostname (``--domain localhost``: browsers and curl resolve
those names to loopback without any DNS set-up), so the tunnel is reached both at
``http://<id>.localhost:<port>/`` and at ``http://127.0.0.1:<port>/<id>/``.
"""

from __future__ import annotations

import argparse
import re
import secrets
import signal
import sys
import threading

from pipegate_protocol import is_dns_label, label_for

from .harness import HarnessError, ProcessGroup, start_tunnel

__all__ = ["main"]

#: The client's log line that names its request inspector.
INSPECTOR_LINE = re.compile(r"inspector: (http://\S+)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipegate-demo", description=__doc__)
    parser.add_argument("--port", type=int, default=8000, help="server port (default 8000)")
    parser.add_argument(
        "--local-url", default=None, help="your local app (default: start the demo app)"
    )
    parser.add_argument("--connection-id", default="node", help="tunnel id (default node)")
    args = parser.parse_args(argv)

    token = secrets.token_urlsafe(24)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with ProcessGroup() as group:
        # Host routing only for an id that can be a hostname label (RT-3).
        hosted = is_dns_label(args.connection_id)
        try:
            tunnel = start_tunnel(
                group,
                token=token,
                connection_id=args.connection_id,
                server_port=args.port,
                origin_url=args.local_url,
                server_args=["--domain", "localhost"] if hosted else [],
            )
        except HarnessError as exc:
            print(f"pipegate-demo: could not start the tunnel: {exc}", file=sys.stderr)
            return 1
        url = tunnel.public_url
        host_url = f"http://{label_for(args.connection_id)}.localhost:{args.port}"
        base = host_url if hosted else url
        # The client logs its inspector's URL (4040 or the next free port) as it starts.
        found = INSPECTOR_LINE.search(tunnel.client.output() if tunnel.client else "")
        inspector = found.group(1) if found else "none (see the client's log)"
        print(
            "\nPipeGate tunnel is up.\n"
            + (
                f"  host URL   : {host_url}/   (its own origin: best for web apps)\n"
                if hosted
                else ""
            )
            + f"  path URL   : {url}/\n"
            f"  local app  : {tunnel.origin_url}\n"
            f"  inspector  : {inspector}   (your requests, live; replay them)\n"
            f"Try:\n"
            f"  curl {base}/\n"
            f"  curl '{base}/echo/hello?x=1&x=2'\n"
            f"  curl -N {url}/sse\n"
            f"Press Ctrl-C to stop.\n",
            flush=True,
        )
        try:
            while not stop.wait(0.5):
                for process in group.processes:
                    if process.poll() is not None:
                        print(f"pipegate-demo: {process.name} exited:\n{process.output()[-2000:]}")
                        return 1
        except KeyboardInterrupt:
            pass
        print("pipegate-demo: stopping", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
