"""A reconciler pass over a 1,000- and 10,000-host fleet on S3 at a realistic round trip (issue 18, item 7).

Set-up: a moto S3 server in its own process, holding a converged fleet (groups of 50 hosts; per host a
registration, a status with its last command's seven events, a command; per group a record naming its last three
deployments, each deployment listing its 50 hosts), and in front of it, in a third process, a small HTTP proxy
that adds `--rtt-ms / 2` each way (and one round trip to open a connection, the TCP handshake; TLS is not
simulated) and counts every request by kind. The client is `StoreReader` over `open_store("s3://…")`, exactly
as `reconcile` builds it. Figures, each a `name: value unit` line:

- cold pass: the first `snapshot()` of a process (every document read);
- warm pass, quiet: a second `snapshot()` when nothing changed (listings only);
- warm pass, heartbeats: after a tenth of the statuses were rewritten (the resync `reconcile watch` runs every
  30 s, with the agents' default 5-minute heartbeat);
- watch poll: `poll_hosts()`, which `reconcile watch` runs every `pollInterval` (1 s) on a quiet fleet, after a
  second's heartbeats;
- warm-start cache (reconciler/shell/warmstart.py): its write after the cold pass (one PUT) and its size; then,
  after every status was rewritten (the next CI run, a heartbeat interval later), a new process's cold pass
  from it (`cold_pass_from_warm_start`): only the statuses and what changed are read;

each with its wall time, the client's CPU time (all threads), moto's CPU time, and the requests by kind
(GET, LIST, PUT) the proxy counted, with what they cost on S3 (us-east-1: GET $0.0004 and PUT/LIST $0.005 per
1,000). Then the S3 bill of an hour of `reconcile watch` on a quiet fleet, from the measured requests, beside the
idle agents' own (their default intervals); and first, a real rollout with real agents, counted per side
(`rollout`), from which a rollout of each fleet size is priced (`fleet_rollout`).

What moto is and is not: it answers S3's protocol faithfully but is slow (about 3.5 ms of its own CPU per GET on
this kind of machine, against S3's which is not ours), and it lists by scanning and sorting the whole bucket for
every page (0.4 s a page at 20,000 keys). The moto process here answers ListObjectsV2 without a delimiter from a
sorted copy of the key names instead (same answers, checked at start-up against moto's own); its GETs are
moto's. On a 2-core machine moto's CPU competes with the client's, so a cold pass's wall time here is an upper
bound: read it with the client CPU and moto CPU lines beside it.

The 10,000-host cold pass reads 31,000 documents, minutes of moto's CPU: it is reported only with `--cold-large`
(the warm figures need it run all the same, so a 10,000-host run takes a few minutes either way).

Usage: .venv/bin/python bench/bench_s3_scale.py [--hosts 1000,10000] [--rtt-ms 20] [--cold-large]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import http.client
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BUCKET = "fleetshift-scale"
PREFIX = "fleet"
GROUP_SIZE = 50
HISTORY = 3
#: us-east-1 S3 Standard request prices, dollars per request.
GET_PRICE = 0.0004 / 1000
PUT_LIST_PRICE = 0.005 / 1000
#: `reconcile watch` defaults (reconciler/settings.py) and the agents' (agent/settings.py).
POLL_INTERVAL = 1.0
RESYNC_INTERVAL = 30.0
HEARTBEAT_INTERVAL = 300.0
AGENT_POLL_INTERVAL = 10.0
NOW = datetime(2026, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------------------------------
# The latency-adding, counting proxy (its own process)


def request_kind(method: str, target: str) -> str:
    """GET, LIST, PUT, DELETE, HEAD or POST: the S3 request classes that are priced differently."""
    parts = urlsplit(target)
    if method == "GET" and "list-type" in parse_qs(parts.query):
        return "LIST"
    return method


class LatencyProxy:
    """HTTP/1.1 with keep-alive towards the client, as S3 answers, whatever the upstream does (moto closes
    every connection). Each request waits half a round trip before it is forwarded and its answer half a round
    trip before it is returned; a new connection waits one round trip first. Request bodies announced with
    `Expect: 100-continue` get their `100 Continue` a round trip later, as from S3."""

    def __init__(self, upstream_port: int, one_way: float) -> None:
        self.upstream_port = upstream_port
        self.one_way = one_way
        self.counts: Counter[str] = Counter()
        self.in_flight = 0
        self.most_in_flight = 0
        self.connections = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        await asyncio.sleep(2 * self.one_way)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                request_line, _, header_block = head.decode("latin-1").partition("\r\n")
                method, target, _ = request_line.split(" ", 2)
                headers = parse_headers(header_block)
                if target.startswith("/__bench__/"):
                    await self.control(target, writer)
                    continue
                if headers.get("expect", "").lower() == "100-continue":
                    await asyncio.sleep(2 * self.one_way)
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = await read_body(reader, headers)
                kind = request_kind(method, target)
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
                try:
                    await asyncio.sleep(self.one_way)
                    status, reply_headers, reply_body = await self.forward(method, target, headers, body)
                    await asyncio.sleep(self.one_way)
                finally:
                    self.in_flight -= 1
                self.counts[kind] += 1
                if status == 304:
                    self.counts["GET 304"] += 1
                writer.write(render_response(status, reply_headers, reply_body, method))
                await writer.drain()
        finally:
            writer.close()

    async def forward(self, method: str, target: str, headers: dict[str, str],
                      body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            lines = [f"{method} {target} HTTP/1.1"]
            for name, value in headers.items():
                if name not in ("connection", "expect", "transfer-encoding", "content-length"):
                    lines.append(f"{name}: {value}")
            lines += [f"content-length: {len(body)}", "connection: close", "", ""]
            writer.write("\r\n".join(lines).encode("latin-1") + body)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, _, header_block = head.decode("latin-1").partition("\r\n")
            status = int(status_line.split(" ", 2)[1])
            reply_headers = parse_headers(header_block)
            if method == "HEAD" or status in (204, 304):
                reply_body = b""
            elif "content-length" in reply_headers:
                reply_body = await reader.readexactly(int(reply_headers["content-length"]))
            elif reply_headers.get("transfer-encoding", "").lower() == "chunked":
                reply_body = await read_chunked(reader)
            else:
                reply_body = await reader.read()
            kept = [(name, value) for name, value in reply_headers.items()
                    if name not in ("connection", "keep-alive", "transfer-encoding", "content-length")]
            if method == "HEAD" and "content-length" in reply_headers:
                kept.append(("content-length", reply_headers["content-length"]))
            return status, kept, reply_body
        finally:
            writer.close()

    async def control(self, target: str, writer: asyncio.StreamWriter) -> None:
        if target == "/__bench__/reset":
            self.counts.clear()
            self.most_in_flight = 0
            self.connections = 0
        payload = json.dumps({"counts": dict(self.counts), "most_in_flight": self.most_in_flight,
                              "connections": self.connections}).encode()
        writer.write(render_response(200, [("content-type", "application/json")], payload, "GET"))
        await writer.drain()


def parse_headers(block: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split("\r\n"):
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return headers


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        return await read_chunked(reader)
    length = int(headers.get("content-length", "0") or 0)
    return await reader.readexactly(length) if length else b""


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return bytes(body)
        body += await reader.readexactly(size)
        await reader.readexactly(2)


def render_response(status: int, headers: list[tuple[str, str]], body: bytes, method: str) -> bytes:
    reason = http.client.responses.get(status, "Unknown")
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{name}: {value}" for name, value in headers)]
    if status not in (204, 304) and method != "HEAD":
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join([*lines, "", ""])).encode("latin-1") + (b"" if method == "HEAD" else body)


def serve_proxy(upstream_port: int, rtt_ms: float) -> None:
    async def main() -> None:
        proxy = LatencyProxy(upstream_port, rtt_ms / 2000)
        server = await asyncio.start_server(proxy.serve, "127.0.0.1", 0, limit=1 << 20, backlog=512)
        print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# --------------------------------------------------------------------------------------------------
# The moto server with the fleet in it (its own process)


def serve_moto(hosts: int) -> None:
    """moto's threaded server; the fleet written straight into its backend (set-up, not measured); a control
    port that rewrites statuses as a heartbeat round would."""
    import logging
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request on stderr
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    check_fast_listing(backend)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port = server._server.server_address[1]  # type: ignore[union-attr]
    backend.create_bucket(BUCKET, "us-east-1")
    fleet = Fleet(hosts)
    for key, body in fleet.documents():
        backend.put_object(BUCKET, f"{PREFIX}/{key}", body)

    class Control(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def do_POST(self) -> None:
            query = parse_qs(urlsplit(self.path).query)
            share, round_number = float(query["share"][0]), int(query["round"][0])
            changed = 0
            for key, body in fleet.heartbeat_round(share, round_number):
                backend.put_object(BUCKET, f"{PREFIX}/{key}", body)
                changed += 1
            payload = json.dumps({"changed": changed}).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    control = ThreadingHTTPServer(("127.0.0.1", 0), Control)
    threading.Thread(target=control.serve_forever, daemon=True).start()
    print(f"ready {port} {control.server_address[1]}", flush=True)
    threading.Event().wait()


def check_fast_listing(backend: object) -> None:
    """Answer ListObjectsV2 without a delimiter from a sorted list of names instead of moto's scan-and-sort of
    every key object for every page; checked against moto's own answers before it is used."""
    import bisect

    from moto.s3.models import FakeDeleteMarker, S3Backend

    original = S3Backend.list_objects_v2

    def fast(self: S3Backend, bucket: object, prefix: str | None, delimiter: str | None,
             continuation_token: str | None, start_after: str | None, max_keys: int) -> object:
        if delimiter:
            return original(self, bucket, prefix, delimiter, continuation_token, start_after, max_keys)
        keys = bucket.keys  # type: ignore[attr-defined]
        names = sorted(name for name in keys if name.startswith(prefix or ""))
        after = self._pagination_tokens.get(continuation_token) if continuation_token else start_after
        first = bisect.bisect_right(names, after) if after else 0
        page = [keys[name] for name in names[first:first + max_keys + 1]]
        page = [key for key in page if not isinstance(key, FakeDeleteMarker)]
        return self._truncate_result(page, max_keys)

    probe = S3Backend("us-east-1", "123456789012")
    bucket = probe.create_bucket("fleetshift-probe", "us-east-1")
    for index in range(2500):
        probe.put_object("fleetshift-probe", f"p/h{index * 7919 % 2500:05d}/s.json", b"x")
    for start in (None, "p/h00999/s.json", "p/zzz"):
        for size in (1, 1000):
            expected = original(probe, bucket, "p/", None, None, start, size)
            got = fast(probe, bucket, "p/", None, None, start, size)
            names = ([k.name for k in expected[0]], expected[1]), ([k.name for k in got[0]], got[1])  # type: ignore[index]
            assert names[0] == names[1], f"fast listing differs from moto's after {start!r}"
    S3Backend.list_objects_v2 = fast  # type: ignore[assignment,method-assign]
    assert isinstance(backend, S3Backend)


# --------------------------------------------------------------------------------------------------
# The fleet


class Fleet:
    """A converged fleet of `hosts` hosts in groups of GROUP_SIZE, as JSON documents under their keys."""

    def __init__(self, hosts: int) -> None:
        self.hosts = hosts
        self.groups = hosts // GROUP_SIZE

    @staticmethod
    def host_id(index: int) -> str:
        return f"web-{index // GROUP_SIZE:04d}-{index % GROUP_SIZE:02d}"

    def documents(self) -> Iterator[tuple[str, bytes]]:
        from contract.keys import command_key, deployment_key, group_state_key, registration_key, status_key
        from contract.models import (
            Deployment,
            DeploymentStatus,
            GroupState,
            HostCommand,
            HostDeploymentState,
            HostDeploymentStatus,
            HostRegistration,
        )

        for group in range(self.groups):
            name = f"svc-{group:04d}"
            revision = self.revision(group)
            members = [self.host_id(group * GROUP_SIZE + h) for h in range(GROUP_SIZE)]
            history = [f"d-{group:04d}-{n}" for n in range(HISTORY)]
            yield group_state_key("shop", name), GroupState(
                application="shop", deployment_group=name, desired_revision=revision, desired_commit="1" * 40,
                effective_revision=revision, effective_commit="1" * 40, history=history, updated_at=NOW).to_json()
            for deployment_id in history:
                yield deployment_key(deployment_id), Deployment(
                    deployment_id=deployment_id, application="shop", deployment_group=name, revision=revision,
                    deployment_config="CodeDeployDefault.HalfAtATime", status=DeploymentStatus.SUCCEEDED,
                    hosts={h: HostDeploymentState(status=HostDeploymentStatus.SUCCEEDED, generation=HISTORY,
                                                  batch=0, dispatched_at=NOW, finished_at=NOW) for h in members},
                    batches=[members], created_at=NOW, updated_at=NOW).to_json()
            for host in members:
                yield registration_key(host), HostRegistration(
                    host_id=host, installation_id="i" * 32, tags={"service": name, "env": "prod"},
                    zone=f"us-east-1{'abc'[hash(host) % 3]}", platform="linux", hostname=f"{host}.example.com",
                    agent_version="0.1.0", registered_at=NOW).to_json()
                yield status_key(host), self.status(host, group, 0)
                yield command_key(host), HostCommand(
                    host_id=host, generation=HISTORY, deployment_id=history[-1], application="shop",
                    deployment_group=name, deployment_group_id=f"dg-{group:020d}", revision=revision,
                    created_at=NOW).to_json()

    def revision(self, group: int) -> object:
        from contract.models import Revision

        return Revision.model_validate(
            {"git": {"repository": f"https://git.example.com/shop/svc-{group}.git", "commit": "a" * 40}})

    def status(self, host: str, group: int, round_number: int) -> bytes:
        from contract.models import (
            DEFAULT_EVENTS,
            CommandProgress,
            CommandStatus,
            EventReport,
            EventStatus,
            HostStatus,
            InstalledRevision,
            Revision,
        )

        revision = self.revision(group)
        assert isinstance(revision, Revision)
        name = f"svc-{group:04d}"
        events = [EventReport(name=event, status=EventStatus.SUCCEEDED, started_at=NOW, ended_at=NOW,
                              exit_code=None if event in ("DownloadBundle", "Install") else 0,
                              log_tail=None if event in ("DownloadBundle", "Install") else "[stdout] ok\n")
                  for event in DEFAULT_EVENTS]
        return HostStatus(
            host_id=host, installation_id="i" * 32, heartbeat_at=NOW + timedelta(minutes=round_number),
            started_at=NOW, agent_version="0.1.0",
            installed={f"shop/{name}": InstalledRevision(application="shop", deployment_group=name,
                                                         revision=revision, deployment_id=f"d-{group:04d}-2",
                                                         installed_at=NOW)},
            command=CommandProgress(deployment_id=f"d-{group:04d}-{HISTORY - 1}", generation=HISTORY,
                                    application="shop", deployment_group=name, status=CommandStatus.SUCCEEDED,
                                    events=events, started_at=NOW, ended_at=NOW),
        ).to_json()

    def heartbeat_round(self, share: float, round_number: int) -> Iterator[tuple[str, bytes]]:
        """The statuses a heartbeat round rewrites: `share` of the hosts, a different slice each round."""
        from contract.keys import status_key

        step = max(1, round(1 / share))
        for index in range(round_number % step, self.hosts, step):
            yield status_key(self.host_id(index)), self.status(self.host_id(index), index // GROUP_SIZE,
                                                               round_number)


# --------------------------------------------------------------------------------------------------
# Measuring


@dataclass
class Servers:
    proxy_port: int
    control_port: int
    moto_pid: int
    #: A second proxy, for the agents of the rollout measurement (counted apart from the reconciler).
    agents_proxy_port: int

    def proxy(self, path: str, *, port: int | None = None) -> dict[str, object]:
        connection = http.client.HTTPConnection("127.0.0.1", port or self.proxy_port, timeout=30)
        try:
            connection.request("GET", f"/__bench__/{path}")
            result: dict[str, object] = json.loads(connection.getresponse().read())
            return result
        finally:
            connection.close()

    def heartbeat(self, share: float, round_number: int) -> int:
        connection = http.client.HTTPConnection("127.0.0.1", self.control_port, timeout=600)
        try:
            connection.request("POST", f"/?share={share}&round={round_number}")
            changed: int = json.loads(connection.getresponse().read())["changed"]
            return changed
        finally:
            connection.close()

    def moto_cpu(self) -> float:
        fields = Path(f"/proc/{self.moto_pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child(arguments: list[str]) -> tuple[subprocess.Popen[str], list[str]]:
    process = subprocess.Popen([sys.executable, __file__, *arguments], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline().split()
    if not line or line[0] != "ready":
        process.kill()
        raise SystemExit(f"{arguments[0]} did not start")
    return process, line[1:]


@contextmanager
def servers(hosts: int, rtt_ms: float) -> Iterator[Servers]:
    started = time.perf_counter()
    moto, (moto_port, control_port) = child(["--serve-moto", str(hosts)])
    try:
        proxy, (proxy_port,) = child(["--serve-proxy", moto_port, str(rtt_ms)])
        agents_proxy, (agents_port,) = child(["--serve-proxy", moto_port, str(rtt_ms)])
        try:
            print(f"setup_{hosts}_hosts: {time.perf_counter() - started:.1f} s", flush=True)
            yield Servers(int(proxy_port), int(control_port), moto.pid, int(agents_port))
        finally:
            for process in (proxy, agents_proxy):
                process.terminate()
                process.wait(timeout=10)
    finally:
        moto.terminate()
        moto.wait(timeout=10)


@dataclass
class Measured:
    wall: float
    client_cpu: float
    moto_cpu: float
    counts: dict[str, int]
    most_in_flight: int

    @property
    def cost(self) -> float:
        return self.counts.get("GET", 0) * GET_PRICE + (
            self.counts.get("LIST", 0) + self.counts.get("PUT", 0)) * PUT_LIST_PRICE


def measured(servers: Servers, action: object) -> Measured:
    assert callable(action)
    servers.proxy("reset")
    gc.collect()
    moto_before, cpu_before, started = servers.moto_cpu(), time.process_time(), time.perf_counter()
    action()
    wall = time.perf_counter() - started
    cpu, moto = time.process_time() - cpu_before, servers.moto_cpu() - moto_before
    answer = servers.proxy("counts")
    counts = answer["counts"]
    in_flight = answer["most_in_flight"]
    assert isinstance(counts, dict) and isinstance(in_flight, int)
    return Measured(wall, cpu, moto, counts, in_flight)


def report(name: str, result: Measured) -> None:
    print(f"{name}_wall: {result.wall:.3f} s")
    print(f"{name}_client_cpu: {result.client_cpu:.3f} s")
    print(f"{name}_moto_cpu: {result.moto_cpu:.2f} s")
    for kind in ("GET", "LIST", "PUT"):
        print(f"{name}_{kind.lower()}_requests: {result.counts.get(kind, 0)} requests")
    print(f"{name}_most_requests_in_flight: {result.most_in_flight} requests")
    print(f"{name}_s3_cost: {result.cost * 100:.4f} cents", flush=True)


def run(hosts: int, rtt_ms: float, *, cold: bool) -> None:
    from contract.store import open_store
    from reconciler.shell.observe import StoreReader

    with servers(hosts, rtt_ms) as running:
        url = f"s3://{BUCKET}/{PREFIX}?endpoint=http://127.0.0.1:{running.proxy_port}"
        reader = StoreReader(open_store(url))
        reader.writes_warm_start = True  # as the lease holder's reader (`PassRunner`): it leaves the cache
        name = f"s3_{hosts}_hosts"
        if cold:
            result = measured(running, reader.snapshot)
            snapshot = reader.snapshot()
            assert len(snapshot.observed.statuses) == hosts, len(snapshot.observed.statuses)
            assert len(snapshot.state.commands) == hosts and len(snapshot.state.deployments) == HISTORY * (
                hosts // GROUP_SIZE)
            report(f"{name}_cold_pass", result)
        else:
            reader.snapshot()  # the cold pass, not reported: the warm figures below need a warm reader
        written: list[bool] = []
        result = measured(running, lambda: written.append(reader.save_warm_start(written_at=datetime.now(UTC))))
        assert written == [True], "the first cold read left no warm-start cache"
        report(f"{name}_warm_start_write", result)
        print(f"{name}_warm_start_size: {warm_start_size(url) / 1e6:.2f} MB")
        quiet = measured(running, reader.snapshot)
        report(f"{name}_warm_pass_quiet", quiet)

        running.heartbeat(RESYNC_INTERVAL / HEARTBEAT_INTERVAL, 1)  # a resync's worth of heartbeats
        beats = measured(running, reader.snapshot)
        report(f"{name}_warm_pass_after_heartbeats", beats)

        running.heartbeat(POLL_INTERVAL / HEARTBEAT_INTERVAL, 2)  # a poll's worth
        poll = measured(running, reader.poll_hosts)
        report(f"{name}_watch_poll", poll)

        if cold:
            # The next `reconcile --once` (CI), a heartbeat interval or more later: every status rewritten since.
            running.heartbeat(1.0, 3)
            fresh = StoreReader(open_store(url))
            result = measured(running, fresh.snapshot)
            assert fresh.warm_start_misses == 0, fresh.warm_start_misses  # nothing cacheable changed meanwhile
            assert fresh.warm_start_hits >= 2 * hosts, fresh.warm_start_hits  # registrations and commands at least
            assert len(fresh.snapshot().observed.statuses) == hosts
            report(f"{name}_cold_pass_from_warm_start", result)
            print(f"{name}_cold_pass_from_warm_start_documents_from_cache: {fresh.warm_start_hits} documents")

        hour(name, hosts, quiet, poll)
        fleet_rollout(hosts, quiet)


def warm_start_size(url: str) -> int:
    from contract.keys import WARM_START_KEY
    from contract.store import open_store

    stored = open_store(url).get(WARM_START_KEY)
    assert stored is not None
    return len(stored.data)


def hour(name: str, hosts: int, quiet: Measured, poll: Measured) -> None:
    """An hour of `reconcile watch` on a quiet fleet, from the measured requests: a poll every pollInterval
    (its LISTs), a full pass every resyncInterval (its LISTs), and every heartbeat's status read once."""
    polls, resyncs = 3600 / POLL_INTERVAL, 3600 / RESYNC_INTERVAL
    lists = polls * poll.counts.get("LIST", 0) + resyncs * quiet.counts.get("LIST", 0)
    gets = hosts * 3600 / HEARTBEAT_INTERVAL
    print(f"{name}_watch_hour_list_requests: {lists:.0f} requests")
    print(f"{name}_watch_hour_get_requests: {gets:.0f} requests")
    print(f"{name}_watch_hour_s3_cost: {lists * PUT_LIST_PRICE + gets * GET_PRICE:.3f} dollars")
    puts, polls = hosts * 3600 / HEARTBEAT_INTERVAL, hosts * 3600 / AGENT_POLL_INTERVAL
    print(f"{name}_agents_idle_hour_put_requests: {puts:.0f} requests (heartbeats)")
    print(f"{name}_agents_idle_hour_get_requests: {polls:.0f} requests (command polls)")
    print(f"{name}_agents_idle_hour_s3_cost: {puts * PUT_LIST_PRICE + polls * GET_PRICE:.3f} dollars", flush=True)


def rollout(hosts: int, rtt_ms: float) -> None:
    """A real rollout on S3: `hosts` real `deploy-agent run` processes (default intervals) through one counting
    proxy, `reconcile --once` (default poll) through another; a HalfAtATime rollout of a 100-file bundle with
    five no-op hooks, after a first one that brought every host to v1. The requests of the second rollout are
    what is counted, per side, and per host (`fleet_rollout` prices a fleet-sized rollout from them)."""
    import shutil
    import tempfile

    from agent.local_fleet import LocalAgent, stop_all
    from bench.bench_rollout import directory_revision, make_bundle
    from contract.store import open_store
    from tests.reconciler.fleet import Config, group_manifest

    with servers(0, rtt_ms) as running:
        connection = http.client.HTTPConnection("127.0.0.1", running.proxy_port)
        connection.request("PUT", f"/{BUCKET}")  # moto with no fleet has no bucket yet
        connection.getresponse().read()
        workdir = Path(tempfile.mkdtemp(prefix="bench-s3-rollout-"))
        reconciler_url = f"s3://{BUCKET}/{PREFIX}?endpoint=http://127.0.0.1:{running.proxy_port}"
        agents_url = f"s3://{BUCKET}/{PREFIX}?endpoint=http://127.0.0.1:{running.agents_proxy_port}"
        bundles = {version: make_bundle(workdir / f"bundle-v{version}", version) for version in (1, 2)}
        config = Config(workdir / "config")
        agents = [LocalAgent(f"host-{n:02d}", workdir / "hosts" / f"host-{n:02d}", tags={"app": "hello"},
                             poll_interval="10s") for n in range(hosts)]
        try:
            for agent in agents:
                agent.start(agents_url, log_level="warning")
            store = open_store(reconciler_url)
            deadline = time.monotonic() + 120
            while sum(item.key.endswith("/status.json") for item in store.list("hosts/")) < hosts:
                if time.monotonic() > deadline:
                    raise SystemExit("agents did not register within 120 s")
                time.sleep(0.5)
            passes = []
            for version in (1, 2):
                config.set_group(group_manifest(revision=directory_revision(bundles[version]),
                                                config="CodeDeployDefault.HalfAtATime"), message=f"v{version}")
                for port in (running.proxy_port, running.agents_proxy_port):
                    running.proxy("reset", port=port)
                started = time.perf_counter()
                done = subprocess.run(
                    [str(Path(sys.executable).parent / "reconcile"), *config.args(), "--store", reconciler_url,
                     "--once"],
                    env={**os.environ, "FLEETSHIFT_RECONCILE_TIMEOUT": "20m"}, capture_output=True, text=True,
                    check=False)
                if done.returncode != 0:
                    raise SystemExit(f"the v{version} rollout failed (exit {done.returncode}): {done.stderr[-2000:]}")
                passes.append(time.perf_counter() - started)
            wall = passes[-1]
            sides = {"reconciler": running.proxy("counts")["counts"],
                     "agents": running.proxy("counts", port=running.agents_proxy_port)["counts"]}
        finally:
            stop_all(agents)
            shutil.rmtree(workdir, ignore_errors=True)
    name = f"s3_rollout_{hosts}_hosts"
    print(f"{name}_wall: {wall:.1f} s (HalfAtATime, default agent and reconcile intervals)")
    total = 0.0
    for side, counts in sides.items():
        assert isinstance(counts, dict)
        for kind in ("GET", "LIST", "PUT"):
            print(f"{name}_{side}_{kind.lower()}_requests: {counts.get(kind, 0)} requests")
        cost = counts.get("GET", 0) * GET_PRICE + (counts.get("LIST", 0) + counts.get("PUT", 0)) * PUT_LIST_PRICE
        total += cost
        print(f"{name}_{side}_s3_cost: {cost * 100:.4f} cents")
        for kind in ("GET", "PUT"):
            print(f"{name}_{side}_{kind.lower()}_requests_per_host: {counts.get(kind, 0) / hosts:.1f} requests")
    print(f"{name}_s3_cost: {total * 100:.4f} cents", flush=True)
    ROLLOUT.update(hosts=hosts, wall=wall, sides=sides)


#: The rollout's counts, for pricing a fleet-sized rollout after the fleet's warm pass is measured.
ROLLOUT: dict[str, object] = {}


def fleet_rollout(hosts: int, quiet: Measured) -> None:
    """A rollout of `hosts` hosts priced from the small real one: the agents' and the reconciler's per-host
    GETs and PUTs times `hosts`, and the reconciler's LISTs as the small rollout's passes (its LISTs over its
    LIST pages per pass) times this fleet's LIST pages per pass. Its duration is the small rollout's: a
    HalfAtATime rollout takes two batches whatever the size, if the hosts run their hooks in parallel."""
    if not ROLLOUT:
        return
    small = int(str(ROLLOUT["hosts"]))
    sides = ROLLOUT["sides"]
    assert isinstance(sides, dict)
    reconciler, agents = sides["reconciler"], sides["agents"]
    small_pages = 1 + 1 + 1 + 1 + 1 + 1  # hosts/, groups/, commands/, traffic/, events/, deployments/: a page each
    passes = reconciler.get("LIST", 0) / small_pages
    gets = (reconciler.get("GET", 0) + agents.get("GET", 0)) * hosts / small
    puts = (reconciler.get("PUT", 0) + agents.get("PUT", 0)) * hosts / small
    lists = passes * quiet.counts.get("LIST", 0) + agents.get("LIST", 0) * hosts / small
    name = f"s3_{hosts}_hosts_rollout"
    print(f"{name}_get_requests: {gets:.0f} requests (computed)")
    print(f"{name}_put_requests: {puts:.0f} requests (computed)")
    print(f"{name}_list_requests: {lists:.0f} requests (computed: {passes:.0f} passes)")
    print(f"{name}_s3_cost: {(gets * GET_PRICE + (puts + lists) * PUT_LIST_PRICE) * 100:.2f} cents (computed)",
          flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-proxy":
        serve_proxy(int(sys.argv[2]), float(sys.argv[3]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-moto":
        serve_moto(int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", default="1000,10000", help="fleet sizes, comma-separated")
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--cold-large", action="store_true", help="also the cold pass above 1,000 hosts")
    parser.add_argument("--rollout-hosts", type=int, default=10, help="real agents in the rollout (0: none)")
    args = parser.parse_args()

    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                      FLEETSHIFT_LOGGING_LEVEL="warning")
    from contract.logs import configure_logging

    configure_logging(level="warning")
    print(f"rtt: {args.rtt_ms:g} ms")
    if args.rollout_hosts:
        rollout(args.rollout_hosts, args.rtt_ms)
    for hosts in (int(value) for value in args.hosts.split(",") if value):
        run(hosts, args.rtt_ms, cold=hosts <= 1000 or args.cold_large)


if __name__ == "__main__":
    main()
