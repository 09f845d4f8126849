"""Cluster mode (issue 17) with real processes: Debian's redis-server, three
pipegate-server nodes with ``--redis-url``, Debian's haproxy running
deploy/haproxy/haproxy.cfg, and one pipegate-client process holding 20 tunnels.

Failover timings are written to ``artifacts/cluster/failover.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from cluster_support import ROOT, Cluster
from e2e_support import TunnelFactory, expected_sha256, tracked_group, wait_until
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

ADMIN = "cluster-admin-token-0123456789"
TUNNELS = [f"t{i:02d}" for i in range(20)]
ARTIFACTS = ROOT / "artifacts" / "cluster"


def _status(url: str, **kwargs: object) -> int:
    try:
        return httpx.get(url, timeout=5.0, **kwargs).status_code  # type: ignore[arg-type]
    except httpx.HTTPError:
        return -1


def _wait_all_relaying(cluster: Cluster, ids: list[str], timeout: float = 30.0) -> None:
    def probe() -> bool | None:
        return True if all(_status(f"{cluster.base}/{i}/echo/r") == 200 for i in ids) else None

    wait_until(probe, timeout=timeout, interval=0.2, what="every tunnel to relay")


def _admin(cluster: Cluster, node: int, path: str) -> httpx.Response:
    return httpx.get(
        f"{cluster.node_base(node)}/_pipegate/admin/{path}",
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=5.0,
    )


def _holders(cluster: Cluster, node: int = 0) -> dict[str, str]:
    """id -> node name, from the cluster view of one node's admin API."""
    response = _admin(cluster, node, "cluster")
    assert response.status_code == 200, response.text
    return {t["id"]: t["node"] for t in response.json()["tunnels"]}


#: Tunnel handshakes the tests hold open; closed when the module's tests end.
_OPEN = contextlib.ExitStack()


def _handshake(base: str, connection_id: str, token: str) -> ClientConnection | int:
    """A raw tunnel handshake: the open connection, or the refusal's HTTP status."""
    return _handshake_with(base, connection_id, token)


def _handshake_with(
    base: str, connection_id: str, token: str, hostname: str = ""
) -> ClientConnection | int:
    headers = {"Authorization": f"Bearer {token}"}
    if hostname:
        headers["PipeGate-Hostname"] = hostname
    try:
        return _OPEN.enter_context(
            connect(
                f"{base.replace('http', 'ws')}/{connection_id}",
                additional_headers=headers,
                subprotocols=["pipegate.v1"],  # type: ignore[list-item]
                open_timeout=10,
            )
        )
    except InvalidStatus as exc:
        return exc.response.status_code


@pytest.fixture(autouse=True)
def _close_handshakes() -> Iterator[None]:
    yield
    _OPEN.close()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    admin = tmp_path / "admin-token"
    admin.write_text(ADMIN)
    with tracked_group() as group:
        yield Cluster(
            group,
            "cluster-" + "k" * 20,
            tmp_path,
            node_args=("--admin-token-file", str(admin), "--offline-grace", "60"),
        ).start()


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory, origin: str) -> Iterator[Cluster]:
    """Three nodes and 20 tunnels for the tests that do not kill anything."""
    tmp = tmp_path_factory.mktemp("cluster")
    admin = tmp / "admin-token"
    admin.write_text(ADMIN)
    tokens = tmp / "tokens.toml"
    tokens.write_text(
        '[[tokens]]\nname = "capped"\ntoken = "capped-token-0123456789"\n'
        'ids = ["cap-*"]\nmax_tunnels = 2\n\n'
        '[[tokens]]\nname = "web"\ntoken = "web-token-0123456789"\n'
        'ids = ["web-*"]\nhostnames = ["*.example.org"]\n'
    )
    with tracked_group() as group:
        cluster = Cluster(
            group,
            "cluster-" + "s" * 20,
            tmp,
            node_args=(
                "--admin-token-file",
                str(admin),
                "--tokens-file",
                str(tokens),
                "--stream-idle-timeout",
                "3",
            ),
        ).start()
        cluster.start_clients(origin, TUNNELS)
        _wait_all_relaying(cluster, TUNNELS)
        yield cluster


def test_twenty_tunnels_through_three_nodes(shared_cluster: Cluster) -> None:
    cluster = shared_cluster
    for connection_id in TUNNELS:
        response = httpx.post(f"{cluster.base}/{connection_id}/echo/x?q=1", content=b"hi")
        assert response.status_code == 200
        report = response.json()
        assert report["raw_path"] == "/echo/x?q=1" or report["raw_path"] == "/echo/x"
        # host routing: <id>.localhost hashes on the same key as /<id>/
        by_host = httpx.get(
            f"{cluster.base}/echo/h", headers={"Host": f"{connection_id}.localhost"}
        )
        assert by_host.status_code == 200, by_host.text
    holders = _holders(cluster, 2)
    assert sorted(holders) == TUNNELS
    assert len(set(holders.values())) >= 2, holders  # spread over the nodes
    view = _admin(cluster, 0, "cluster").json()
    assert sorted(n["name"] for n in view["nodes"]) == ["node1", "node2", "node3"]
    assert sum(n["tunnels"] for n in view["nodes"]) == 20
    # An unknown id through the balancer: an immediate 404 with a reason.
    unknown = httpx.get(f"{cluster.base}/nobody-here/x")
    assert unknown.status_code == 404
    assert "nobody-here" in unknown.text


def test_the_same_id_through_two_nodes_gets_one_409(shared_cluster: Cluster) -> None:
    cluster = shared_cluster
    for round_ in range(5):
        connection_id = f"race-{round_}"
        with ThreadPoolExecutor(2) as pool:
            outcomes = list(
                pool.map(
                    _handshake,
                    [cluster.node_base(0), cluster.node_base(1)],
                    [connection_id] * 2,
                    [cluster.token] * 2,
                )
            )
        accepted = [o for o in outcomes if not isinstance(o, int)]
        refused = [o for o in outcomes if isinstance(o, int)]
        assert len(accepted) == 1, outcomes
        assert refused == [409], outcomes
        # and a third node agrees
        third = _handshake(cluster.node_base(2), connection_id, cluster.token)
        assert third == 409
        accepted[0].close()


def test_the_per_token_limit_counts_every_node(shared_cluster: Cluster) -> None:
    cluster = shared_cluster
    token = "capped-token-0123456789"
    first = _handshake(cluster.node_base(0), "cap-a", token)
    second = _handshake(cluster.node_base(1), "cap-b", token)
    assert not isinstance(first, int)
    assert not isinstance(second, int)
    assert _handshake(cluster.node_base(2), "cap-c", token) == 429
    second.close()

    def freed() -> bool | None:
        third = _handshake(cluster.node_base(2), "cap-c", token)
        if isinstance(third, int):
            return None
        third.close()
        return True

    wait_until(freed, timeout=10.0, interval=0.2, what="the closed tunnel's slot")
    first.close()


def _until_closed(websocket: ClientConnection) -> ConnectionClosed:
    """Read (the server's pings, a go-away) until the connection closes; bounded."""
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        try:
            websocket.recv(timeout=deadline - time.monotonic())
        except ConnectionClosed as exc:
            return exc
        except TimeoutError:
            break
    raise AssertionError("the connection stayed open")


def test_an_admin_kick_through_any_node_reaches_the_holder(shared_cluster: Cluster) -> None:
    """POST .../kick on a node that does not hold the id: the holder disconnects it."""
    cluster = shared_cluster
    held = _handshake(cluster.node_base(0), "kick-me", cluster.token)
    assert not isinstance(held, int)
    response = httpx.post(
        f"{cluster.node_base(2)}/_pipegate/admin/tunnels/kick-me/kick",
        json={"reason": "maintenance"},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert response.status_code == 200, response.text
    assert "node1" in response.json()["detail"]
    closed = _until_closed(held)
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1008
    missing = httpx.post(
        f"{cluster.node_base(2)}/_pipegate/admin/tunnels/nobody/kick",
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert missing.status_code == 404


def test_custom_hostnames_reach_their_tunnel_through_any_node(
    shared_cluster: Cluster, tunnels: TunnelFactory
) -> None:
    """HAProxy cannot know which node holds api.example.org: every node forwards its
    requests (HTTP, bodies both ways, WebSocket) to the node that holds it."""
    cluster = shared_cluster
    client = tunnels.client(
        f"{cluster.ws_base}/web-1",
        "--hostname",
        "app.example.org",
        "--no-inspect",
        token="web-token-0123456789",
    )
    host = {"Host": "app.example.org"}

    def relaying() -> bool | None:
        if client.poll() is not None:
            raise AssertionError(client.output()[-2000:])
        return True if _status(f"{cluster.base}/r/echo/x", headers=host) == 200 else None

    wait_until(relaying, timeout=20.0, interval=0.2, what="the custom hostname to relay")
    holder = _holders(cluster)["web-1"]
    assert _admin(cluster, 1, "cluster").json()["tunnels"]
    # Through every node directly: the holder serves, the others forward.
    # The caller comes from 127.0.0.2, the nodes from 127.0.0.1.
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as caller:
        for node in range(3):
            response = caller.get(f"{cluster.node_base(node)}/n{node}/echo/y?q=1", headers=host)
            assert response.status_code == 200, (node, holder, response.text)
            report = response.json()
            assert report["raw_path"] == f"/n{node}/echo/y"
            names = {name.lower(): value for name, value in report["headers"]}
            assert names["x-forwarded-host"] == "app.example.org"
            # The app learns the caller, whichever node it reached first.
            assert names["x-forwarded-for"].split(",")[0].strip() == "127.0.0.2"
    # Through the balancer, whatever node each first path segment hashes to.
    for n in range(12):
        assert _status(f"{cluster.base}/s{n}/echo/z", headers=host) == 200
    size = 5 * 1024 * 1024
    body = os.urandom(size)
    for node in range(3):
        upload = httpx.post(
            f"{cluster.node_base(node)}/u/upload", content=body, headers=host, timeout=30.0
        )
        assert upload.json() == {"length": size, "sha256": hashlib.sha256(body).hexdigest()}
        download = httpx.get(
            f"{cluster.node_base(node)}/d/bytes/{size}", headers=host, timeout=30.0
        )
        assert hashlib.sha256(download.content).hexdigest() == expected_sha256(size)
    for node in range(3):
        sock = socket.create_connection(("127.0.0.1", cluster.node_ports[node]))
        with connect("ws://app.example.org/w/ws/echo", sock=sock, open_timeout=10) as ws:
            ws.send("through a node")
            assert ws.recv(timeout=10) == "through a node"
            ws.send(b"\x00\x01")
            assert ws.recv(timeout=10) == b"\x00\x01"
    # Another tunnel cannot take the name through another node.
    other = next(i for i in range(3) if f"node{i + 1}" != holder)
    refused = _handshake_with(
        cluster.node_base(other), "web-2", "web-token-0123456789", "app.example.org"
    )
    assert refused == 409
    # A request another node already forwarded is never forwarded again.
    looped = httpx.get(
        f"{cluster.node_base(other)}/l/echo/x", headers={**host, "Via": "1.1 pipegate"}
    )
    assert looped.status_code == 503
    # A caller that reads nothing of a forwarded 64 MiB download is dropped after the
    # idle timeout (3 s here), not held for ever with its task and connection.
    with socket.socket() as stalled:
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", cluster.node_ports[other]))
        stalled.sendall(b"GET /d/bytes/67108864 HTTP/1.1\r\nHost: app.example.org\r\n\r\n")
        time.sleep(6.0)  # reads nothing for twice the idle timeout
        # The forwarding node gave up on its own (before this caller read anything).
        assert "reason=the caller read nothing" in cluster.node_processes[other].output()
        stalled.settimeout(10.0)
        received = 0
        with contextlib.suppress(ConnectionResetError):
            while chunk := stalled.recv(1 << 20):
                received += len(chunk)
        assert received < 64 * 1024 * 1024  # cut off, not delivered
    assert _status(f"{cluster.node_base(other)}/after/echo/x", headers=host) == 200


@dataclass
class _Load:
    """Requests round-robin over every tunnel through the balancer, from one thread,
    until stopped; every outcome recorded with its time."""

    base: str
    ids: list[str]
    outcomes: dict[str, list[tuple[float, int]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=5.0) as http:
            deadline = time.monotonic() + 120.0  # bounded whatever happens
            while not self._stop.is_set() and time.monotonic() < deadline:
                for connection_id in self.ids:
                    try:
                        status = http.get(f"{self.base}/{connection_id}/echo/load").status_code
                    except httpx.HTTPError:
                        status = -1
                    self.outcomes.setdefault(connection_id, []).append((time.monotonic(), status))

    def __enter__(self) -> _Load:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def wait_stable(self, ids: list[str], *, window: float = 1.5, timeout: float = 15.0) -> None:
        """Until the load has seen only 200s for ``window`` seconds for every id of
        ``ids`` (a tunnel may move twice: HAProxy redispatches a refused connection
        to one node, then sends the id to its ring successor once its health checks
        mark the node down)."""

        def stable() -> bool | None:
            now = time.monotonic()
            for connection_id in ids:
                recent = [
                    (t, s)
                    for t, s in list(self.outcomes.get(connection_id, []))
                    if t >= now - window
                ]
                if not recent or any(s != 200 for _, s in recent):
                    return None
                if min(t for t, _ in recent) > now - window + 0.5:
                    return None  # too few samples in the window
            return True

        wait_until(stable, timeout=timeout, interval=0.1, what=f"{ids} to relay steadily")

    def outage(self, connection_id: str, since: float) -> float:
        """Seconds from the first failure after ``since`` to the first 200 after the
        last one (0 when nothing failed)."""
        failed = self.failures(connection_id, since)
        if not failed:
            return 0.0
        return self.recovered_after(connection_id, since) - (failed[0][0] - since)

    def failures(self, connection_id: str, since: float) -> list[tuple[float, int]]:
        return [(t, s) for t, s in self.outcomes.get(connection_id, []) if t >= since and s != 200]

    def recovered_after(self, connection_id: str, since: float) -> float:
        """Seconds from ``since`` to the first 200 after the last failure."""
        outcomes = [(t, s) for t, s in self.outcomes.get(connection_id, []) if t >= since]
        last_failure = max((t for t, s in outcomes if s != 200), default=since)
        first_ok = min((t for t, s in outcomes if s == 200 and t >= last_failure), default=None)
        if first_ok is None:
            changes = [
                (round(t - since, 2), s)
                for n, (t, s) in enumerate(outcomes)
                if n == 0 or outcomes[n - 1][1] != s
            ]
            raise AssertionError(f"{connection_id} never recovered: {changes}")
        return first_ok - since


def _busiest_node(cluster: Cluster) -> tuple[int, str, list[str], list[str]]:
    """The node holding the most tunnels: its index and name, its ids, the others'."""
    holders = _holders(cluster)
    name = max(
        {"node1", "node2", "node3"}, key=lambda n: sum(1 for v in holders.values() if v == n)
    )
    held = sorted(i for i, n in holders.items() if n == name)
    others = sorted(i for i, n in holders.items() if n != name)
    assert held, holders
    assert others, holders
    return int(name.removeprefix("node")) - 1, name, held, others


def _record(name: str, figures: dict[str, object]) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / "failover.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = figures
    path.write_text(json.dumps(data, indent=2) + "\n")


def test_a_node_dies_and_comes_back(cluster: Cluster, origin: str, tmp_path: Path) -> None:
    cluster.start_clients(origin, TUNNELS)
    _wait_all_relaying(cluster, TUNNELS)
    victim, victim_name, moved, stayed = _busiest_node(cluster)
    survivor = next(i for i in range(3) if i != victim)

    with _Load(cluster.base, TUNNELS) as load:
        time.sleep(1.0)
        killed_at = time.monotonic()
        cluster.kill_node(victim)
        load.wait_stable(moved)
        kill_recovery = {i: load.recovered_after(i, killed_at) for i in moved}
        kill_outage = max(load.outage(i, killed_at) for i in moved)
        kill_failures = {i: load.failures(i, killed_at) for i in stayed}

        holders_after_kill = _holders(cluster, survivor)
        assert sorted(holders_after_kill) == TUNNELS
        assert victim_name not in holders_after_kill.values()

        back_at = time.monotonic()
        cluster.restart_node(victim)
        cluster.wait_balanced(up=range(3))
        wait_until(
            lambda: (
                True
                if set(_holders(cluster, survivor).items()) >= {(i, victim_name) for i in moved}
                else None
            ),
            timeout=20.0,
            interval=0.2,
            what="the tunnels to move back to the node that came back",
        )
        load.wait_stable(moved)
        back_recovery = {i: load.recovered_after(i, back_at) for i in moved}
        back_failures = {i: load.failures(i, back_at) for i in stayed}

    figures = {
        "tunnels_on_killed_node": len(moved),
        "kill_recovery_s": {"max": max(kill_recovery.values()), "per_id": kill_recovery},
        "kill_failed_requests_of_others": sum(len(v) for v in kill_failures.values()),
        "rejoin_recovery_s": {"max": max(back_recovery.values()), "per_id": back_recovery},
        "kill_outage_s": kill_outage,
        "rejoin_outage_s": max(load.outage(i, back_at) for i in moved),
        "rejoin_failed_requests_of_others": sum(len(v) for v in back_failures.values()),
        "requests": sum(len(v) for v in load.outcomes.values()),
    }
    _record("node_killed_and_back", figures)
    assert all(not v for v in kill_failures.values()), kill_failures
    assert all(not v for v in back_failures.values()), back_failures
    assert max(kill_recovery.values()) < 10.0, figures
    assert max(back_recovery.values()) < 10.0, figures
    # the cluster view agrees with where the balancer sends each id now
    assert sorted(_holders(cluster, victim)) == TUNNELS


def test_redis_restarts_without_double_ownership(
    cluster: Cluster, origin: str, tmp_path: Path
) -> None:
    ids = TUNNELS[:6]
    cluster.start_clients(origin, ids)
    _wait_all_relaying(cluster, ids)
    holders = _holders(cluster)
    target = ids[0]
    holder = int(holders[target].removeprefix("node")) - 1
    other = (holder + 1) % 3

    assert cluster.redis is not None
    with _Load(cluster.base, ids) as load:
        time.sleep(0.5)
        down_at = time.monotonic()
        cluster.redis.kill()
        time.sleep(1.5)
        # Redis down: a new tunnel is refused with 503 (never granted unchecked)...
        assert _handshake(cluster.node_base(other), "newcomer", cluster.token) == 503
        # ...an id held elsewhere cannot be taken...
        assert _handshake(cluster.node_base(other), target, cluster.token) == 503
        # ...and a request this node cannot place gets 503, not a wrong 404.
        assert httpx.get(f"{cluster.node_base(other)}/{target}/x").status_code == 503
        cluster.start_redis()
        # Redis came back empty: until every node re-wrote its leases, claims wait.
        attempts: list[object] = []
        deadline = time.monotonic() + 6.0
        while time.monotonic() < deadline:
            outcome = _handshake(cluster.node_base(other), target, cluster.token)
            attempts.append(outcome)
            assert isinstance(outcome, int), "a second node took a held id"
            time.sleep(0.2)
        assert attempts[-1] == 409, attempts  # the holder re-wrote its lease
        assert 503 in attempts or 409 in attempts
        time.sleep(0.5)
    # Established tunnels never failed a request while Redis was gone.
    failures = {i: load.failures(i, down_at) for i in ids}
    assert all(not v for v in failures.values()), failures
    assert sorted(_holders(cluster)) == ids
    _record(
        "redis_restart",
        {
            "requests_during": sum(len(v) for v in load.outcomes.values()),
            "failed": sum(len(v) for v in failures.values()),
            "claims_refused_after_restart": [a for a in attempts if isinstance(a, int)],
        },
    )


def test_a_stranger_flooding_unknown_ids_costs_no_redis_state(shared_cluster: Cluster) -> None:
    """Without a token: 1500 requests for random ids and random <id>.localhost hosts
    through the balancer. Each costs a node one Redis read and nothing else: every one
    gets 404, Redis holds no new key, and the tunnels keep serving."""
    cluster = shared_cluster
    store = redis.Redis(port=cluster.redis_port)
    keys_before = store.dbsize()
    rss_before = [_rss_mib(p.pid) for p in cluster.node_processes]
    statuses: dict[int, int] = {}

    def flood(worker: int) -> None:
        with httpx.Client(timeout=10.0) as http:
            for n in range(250):
                name = f"x{worker}-{n}-{secrets.token_hex(4)}"
                if n % 2:
                    response = http.get(f"{cluster.base}/{name}/p")
                else:
                    response = http.get(f"{cluster.base}/p", headers={"Host": f"{name}.localhost"})
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(flood, range(6)))
    assert statuses == {404: 1500}
    assert store.dbsize() == keys_before
    for before, process in zip(rss_before, cluster.node_processes, strict=True):
        assert _rss_mib(process.pid) - before < 20
    _wait_all_relaying(cluster, TUNNELS, timeout=10.0)


def test_a_draining_node_hands_its_tunnels_over(
    cluster: Cluster, origin: str, tmp_path: Path
) -> None:
    """SIGTERM on a node: its tunnels reconnect through the balancer to the other
    nodes (the draining node frees their ids at once), the others never notice."""
    ids = TUNNELS[:9]
    cluster.start_clients(origin, ids)
    _wait_all_relaying(cluster, ids)
    victim, victim_name, moved, stayed = _busiest_node(cluster)
    survivor = next(i for i in range(3) if i != victim)
    with _Load(cluster.base, ids) as load:
        time.sleep(0.5)
        stopped_at = time.monotonic()
        cluster.node_processes[victim].stop(timeout=30.0)
        load.wait_stable(moved)
    recovery = {i: load.recovered_after(i, stopped_at) for i in moved}
    failures = {i: load.failures(i, stopped_at) for i in stayed}
    _record(
        "node_drained",
        {"tunnels_on_drained_node": len(moved), "recovery_s": max(recovery.values())},
    )
    assert all(not v for v in failures.values()), failures
    assert max(recovery.values()) < 10.0, recovery
    assert victim_name not in _holders(cluster, survivor).values()


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_the_conformance_suite_passes_against_the_cluster(cluster: Cluster) -> None:
    """The server side of the conformance suite, run as a third party runs it, against
    HAProxy in front of three nodes: the cluster is one conformant server."""
    report = cluster.workdir / "conformance-report.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "conformance/",
            "--server-url",
            cluster.base,
            "--client-token",
            cluster.token,
            "--side",
            "server",
            "--server-domain",
            cluster.domain,
            "--conformance-report",
            str(report),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert " passed" in summary, summary
    assert "skipped" not in summary, summary
    assert "xfail" not in summary, summary
    assert json.loads(report.read_text())  # the per-rule report was written
