"""A whole cluster on loopback for the end-to-end tests and the benchmark: Debian's
``redis-server``, several ``pipegate-server`` nodes with ``--redis-url``, and Debian's
``haproxy`` running ``deploy/haproxy/haproxy.cfg`` with its addresses replaced.

Imported as ``cluster_support`` (tests/e2e is on ``sys.path`` for the tests; the
benchmark puts it there).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from e2e_support import CLIENT_ARGS, SERVER_ARGS, probe_status, wait_until
from pipegate_conformance.harness import (
    HarnessError,
    ManagedProcess,
    ProcessGroup,
    client_command,
    free_port,
    server_command,
    wait_for_port,
)

ROOT = Path(__file__).resolve().parents[2]
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
#: The domain the shipped config routes by host; the tests use ``<id>.localhost``.
SHIPPED_DOMAIN = "tunnels.example.com"


def require(program: str) -> str:
    """The path of a Debian program the cluster needs. ``.ci/run`` installs it when
    missing, so under CI its absence fails the test; elsewhere the test is skipped."""
    path = shutil.which(program)
    if path is not None:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{program} is not installed (.ci/run installs Debian's)")
    pytest.skip(f"{program} is not installed (apt-get install {program})")


def haproxy_config(bind_port: int, node_ports: list[int], domain: str) -> str:
    """deploy/haproxy/haproxy.cfg with its frontend on ``127.0.0.1:<bind_port>``, the
    nodes on loopback and ``domain`` for host routing; everything else as shipped."""
    text = HAPROXY_CFG.read_text(encoding="utf-8")
    text, binds = re.subn(r"(?m)^    bind :80$", f"    bind 127.0.0.1:{bind_port}", text)
    text, domains = re.subn(re.escape("-m end ." + SHIPPED_DOMAIN), "-m end ." + domain, text)
    servers = "".join(
        f"    server node{i} 127.0.0.1:{port}\n" for i, port in enumerate(node_ports, 1)
    )
    text, nodes = re.subn(r"(?m)(^    server node\d+ .*\n)+", servers, text)
    if (binds, domains, nodes) != (1, 1, 1):
        raise HarnessError(
            f"{HAPROXY_CFG} no longer has the lines this harness replaces "
            f"(bind :80, .{SHIPPED_DOMAIN}, the server lines): {binds, domains, nodes}"
        )
    return text


@dataclass
class Cluster:
    """Redis, ``nodes`` server nodes and HAProxy in front of them, in ``group``."""

    group: ProcessGroup
    token: str
    workdir: Path
    nodes: int = 3
    domain: str = "localhost"
    node_args: tuple[str, ...] = ()
    redis_port: int = field(default_factory=free_port)
    lb_port: int = field(default_factory=free_port)
    node_ports: list[int] = field(default_factory=list)
    node_processes: list[ManagedProcess] = field(default_factory=list)
    redis: ManagedProcess | None = None
    haproxy: ManagedProcess | None = None

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def base(self) -> str:
        """The public base URL: through the balancer."""
        return f"http://127.0.0.1:{self.lb_port}"

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.lb_port}"

    def node_base(self, index: int) -> str:
        return f"http://127.0.0.1:{self.node_ports[index]}"

    def start(self) -> Cluster:
        self.start_redis()
        self.node_ports = [free_port() for _ in range(self.nodes)]
        for index in range(self.nodes):
            self.node_processes.append(self.group.start(f"node{index + 1}", self._node_argv(index)))
        for index in range(self.nodes):
            self.wait_node(index)
        self.start_haproxy()
        self.wait_settled()
        return self

    def wait_settled(self, timeout: float = 10.0) -> None:
        """Until the cluster takes claims: a Redis without the cluster's epoch (a new
        cluster, or one whose Redis lost its data) refuses them for the settle period
        while the nodes write their leases (``_cluster``)."""
        store = redis.Redis(port=self.redis_port)
        try:
            wait_until(
                lambda: (
                    True
                    if store.exists("pipegate:epoch:cluster")
                    and not store.exists("pipegate:settle:cluster")
                    else None
                ),
                timeout=timeout,
                interval=0.05,
                what="the cluster's settle period to end",
            )
        finally:
            store.close()

    def start_redis(self) -> None:
        redis_server = require("redis-server")
        argv = [
            redis_server,
            "--port",
            str(self.redis_port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
        ]
        if self.redis is None:
            self.redis = self.group.start("redis", argv)
        else:
            self.redis.start()
        wait_for_port("127.0.0.1", self.redis_port, timeout=10.0)

    def _node_argv(self, index: int) -> list[str]:
        return server_command(
            self.node_ports[index],
            self.token,
            *SERVER_ARGS,
            "--redis-url",
            self.redis_url,
            "--node-name",
            f"node{index + 1}",
            "--node-url",
            self.node_base(index),
            "--domain",
            self.domain,
            # HAProxy reports the visitor (option forwardfor).
            "--forwarded-allow-ips",
            "127.0.0.1",
            *self.node_args,
        )

    def wait_node(self, index: int, timeout: float = 20.0) -> None:
        process = self.node_processes[index]
        url = f"{self.node_base(index)}/_pipegate/health"

        def healthy() -> bool | None:
            if process.poll() is not None:
                raise HarnessError(f"{process.name} exited:\n{process.output()[-3000:]}")
            return True if probe_status(url) == 200 else None

        wait_until(healthy, timeout=timeout, interval=0.05, what=f"{process.name} health")

    def start_haproxy(self) -> None:
        haproxy = require("haproxy")
        config = self.workdir / "haproxy.cfg"
        text = haproxy_config(self.lb_port, self.node_ports, self.domain)
        # The runtime API, for the tests to see what the health checks decided.
        text = text.replace(
            "global\n", f"global\n    stats socket {self.workdir / 'haproxy.sock'} mode 600\n", 1
        )
        config.write_text(text)
        self.haproxy = self.group.start("haproxy", [haproxy, "-db", "-f", str(config)])
        wait_for_port("127.0.0.1", self.lb_port, timeout=10.0)
        self.wait_balanced(up=range(self.nodes))

    def server_states(self) -> dict[str, str]:
        """HAProxy's view of each node: ``UP``, ``DOWN``, ``UP 1/2``, ..."""
        return {name: row.get("status", "") for name, row in self.server_stats().items()}

    def server_stats(self) -> dict[str, dict[str, str]]:
        """HAProxy's ``show stat`` row of each node (``status``, ``stot``, ...)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5.0)
            sock.connect(str(self.workdir / "haproxy.sock"))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        lines = data.decode().splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(","), strict=False))
            if row.get("pxname") == "pipegate" and row.get("svname", "").startswith("node"):
                rows[row["svname"]] = row
        return rows

    def start_clients(
        self, origin: str, ids: Sequence[str], processes: int = 1
    ) -> list[ManagedProcess]:
        """``processes`` pipegate-client processes through the balancer, each with a
        ``--config`` file holding its share of ``ids`` (one WebSocket per tunnel), all
        in front of ``origin``."""
        started = []
        for index in range(processes):
            config = self.workdir / f"clients{index + 1}.toml"
            lines = [
                f'server_url = "{self.ws_base}"',
                'token_env = "PIPEGATE_CLIENT_TOKEN"',
                "inspect = false",
            ]
            for connection_id in ids[index::processes]:
                lines += ["", "[[tunnels]]", f'id = "{connection_id}"', f'local_url = "{origin}"']
            config.write_text("\n".join(lines) + "\n")
            argv = [client_command(origin, "ws://-", self.token)[0], "--config", str(config)]
            started.append(
                self.group.start(
                    f"clients{index + 1}",
                    [*argv, *CLIENT_ARGS],
                    env={"PIPEGATE_CLIENT_TOKEN": self.token},
                )
            )
        return started

    def wait_balanced(self, *, up: range | list[int], timeout: float = 20.0) -> None:
        """Until HAProxy's health checks see exactly the nodes ``up`` as UP."""
        wanted = {f"node{i + 1}" for i in up}

        def probe() -> bool | None:
            states = self.server_states()
            now_up = {name for name, status in states.items() if status == "UP"}
            return True if now_up == wanted else None

        wait_until(probe, timeout=timeout, interval=0.1, what=f"HAProxy to see {sorted(wanted)} up")

    def kill_node(self, index: int) -> None:
        """SIGKILL: a crash, as far as HAProxy, Redis and the clients can tell."""
        self.node_processes[index].kill()

    def restart_node(self, index: int) -> None:
        self.node_processes[index].start()
        self.wait_node(index)

    def restart_redis(self) -> None:
        assert self.redis is not None
        self.redis.kill()
        time.sleep(0.3)
        self.start_redis()
