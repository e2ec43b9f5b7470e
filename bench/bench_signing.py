#!/usr/bin/env python3
"""What signed documents cost (issue 15, "trust chain"): signing a command, checking it, reading through the sealed
store, and a reconciler's cold read of a whole fleet's signed commands, set against what an agent already spends
on a poll.

- **sign / verify**: `Signer.sign` and `open_envelope` on one typical `HostCommand` (the shape
  tests/daemon/agentproc.py `make_command` builds), in microseconds per call.
- **sealed get**: `SealedStore.get` of a signed command over a `MemoryStore` (the signature checked on every
  read) against a plain `MemoryStore.get` of the same command unsigned: the difference is what the sealed layer adds
  to one read, with no I/O to hide it.
- **cold read**: a fresh `reconciler.shell.observe.StoreReader` (what a reconciler does on start, and `reconcile
  status` on every run) taking a snapshot of a file:// store holding `--commands` commands, signed and checked
  against the same commands unsigned and read through the plain store; both stores are in the page cache (populated
  just before), so the figures are CPU: listing, reading, verifying, parsing.
- **warm-start refresh**: what a `watch` spends, each time it rewrites the warm-start cache, on the stored form of
  `--commands` signed commands it wrote itself (`contract.store.bulk.stored_form`: serialised and sealed again,
  not read back; reconciler/shell/warmstart.py).
- **agent poll**: what an idle agent does every `pollInterval` (10 s by default) on a file store, a conditional
  get of its unchanged command, plain and through the sealed store. An unchanged command is never verified again:
  the signature is checked once per new command version, so its cost is set against one poll interval.

Each timing is the best of `--repeat` runs (the least disturbed by other work on the machine, as `timeit` reports),
so ratios compare like with like. Prints one `name: value unit` line per figure on stdout; logs go to stderr.

Usage: .venv/bin/python bench/bench_signing.py [--commands 10000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from contract.keys import command_key
from contract.logs import configure_logging
from contract.models import HostCommand, LocalLocation, Revision
from contract.signing import Signer, Trust, open_envelope
from contract.store import MemoryStore, Store, open_store
from contract.store.bulk import stored_form
from contract.store.sealed import seal_store, store_audience
from reconciler.shell.observe import StoreReader

NOW = datetime(2026, 1, 1, tzinfo=UTC)
#: The agent's default idle poll interval (agent/settings.py `pollInterval`).
DEFAULT_POLL_INTERVAL = timedelta(seconds=10)
#: Writers used to populate the file stores (each put fsyncs; threads overlap the waits).
POPULATE_WORKERS = 8


def host_command(index: int) -> HostCommand:
    """A typical command: the fields `make_command` in tests/daemon/agentproc.py sets, for host `index`."""
    return HostCommand(
        host_id=f"host-{index:05d}",
        generation=3,
        deployment_id="d-000000003",
        application="hello",
        deployment_group="production",
        deployment_group_id="dg-production",
        revision=Revision(local=LocalLocation(path="/srv/bundles/hello/v3", bundle_type="directory")),
        created_at=NOW,
    )


def per_call(function: Callable[[], object], calls: int, repeat: int) -> float:
    """Seconds per call: the best of `repeat` timed loops of `calls` calls."""
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(calls):
            function()
        runs.append((time.perf_counter() - started) / calls)
    return min(runs)


def micro(name: str, seconds: float) -> None:
    print(f"{name}: {seconds * 1e6:.1f} us")


def bench_envelopes(signer: Signer, trust: Trust, repeat: int) -> float:
    """Sign and verify one command; returns the seconds one verification takes."""
    key = command_key("host-00001")
    payload = host_command(1).to_json()
    audience = "file-store:0123456789abcdef0123456789abcdef"
    envelope = signer.sign(audience=audience, key=key, payload=payload)
    assert open_envelope(envelope, trust=trust, audience=audience, key=key)[0] == payload
    print(f"command_payload_size: {len(payload)} bytes")
    print(f"command_envelope_size: {len(envelope)} bytes")
    micro("sign_command", per_call(lambda: signer.sign(audience=audience, key=key, payload=payload), 500, repeat))
    verify = per_call(lambda: open_envelope(envelope, trust=trust, audience=audience, key=key), 500, repeat)
    micro("verify_command", verify)
    # The Ed25519 check alone, on a message of the same size: what open_envelope adds is the rest.
    public = signer.public.key
    message = b"m" * (len(payload) + len(audience) + len(key) + 40)
    signature = signer._key.sign(message)
    micro("ed25519_verify_alone", per_call(lambda: public.verify(signature, message), 500, repeat))
    return verify


def bench_sealed_get(signer: Signer, trust: Trust, repeat: int) -> None:
    key = command_key("host-00001")
    payload = host_command(1).to_json()
    plain = MemoryStore()
    plain.put(key, payload)
    inner = MemoryStore()
    seal_store(inner, signer=signer).put(key, payload)
    sealed = seal_store(inner, trust=trust)
    got = sealed.get(key)
    assert got is not None and got.refused is None and got.data == payload
    plain_get = per_call(lambda: plain.get(key), 1000, repeat)
    sealed_get = per_call(lambda: sealed.get(key), 1000, repeat)
    micro("memory_get_plain_command", plain_get)
    micro("memory_get_sealed_command_verified", sealed_get)
    micro("sealed_get_overhead_per_command", sealed_get - plain_get)


def populate(store: Store, commands: int) -> None:
    def write(index: int) -> None:
        store.put(command_key(f"host-{index:05d}"), host_command(index).to_json())

    with ThreadPoolExecutor(max_workers=POPULATE_WORKERS) as pool:
        list(pool.map(write, range(commands)))


def cold_read(open_reader_store: Callable[[], Store], commands: int, repeat: int) -> float:
    """Seconds for a fresh StoreReader's first snapshot (the best of `repeat`)."""
    runs = []
    for _ in range(repeat):
        reader = StoreReader(open_reader_store())
        started = time.perf_counter()
        snapshot = reader.snapshot()
        runs.append(time.perf_counter() - started)
        assert len(snapshot.state.commands) == commands, len(snapshot.state.commands)
    return min(runs)


def bench_stored_form(signer: Signer, commands: int, repeat: int) -> None:
    store = seal_store(MemoryStore(), signer=signer)
    documents = [(command_key(f"host-{n:05d}"), host_command(n)) for n in range(commands)]

    def run() -> None:
        for key, document in documents:
            stored_form(store, key, document.to_json())

    print(f"warm_start_stored_form_{commands}_signed_commands: {per_call(run, 1, repeat) * 1000:.0f} ms")


def bench_cold_read(folder: Path, signer: Signer, trust: Trust, commands: int, repeat: int) -> None:
    plain_url, signed_url = f"file://{folder}/plain", f"file://{folder}/signed"
    started = time.perf_counter()
    populate(open_store(plain_url), commands)
    populate(seal_store(open_store(signed_url), signer=signer), commands)
    print(f"populate_{commands}_commands_twice: {time.perf_counter() - started:.1f} s", flush=True)

    unsigned = cold_read(lambda: open_store(plain_url, create=False), commands, repeat)
    signed = cold_read(lambda: seal_store(open_store(signed_url, create=False), trust=trust), commands, repeat)
    # The reconciler itself holds the private key, so it checks its own records by their MAC.
    own = cold_read(lambda: seal_store(open_store(signed_url, create=False), signer=signer, trust=trust), commands,
                    repeat)
    print(f"cold_read_{commands}_commands_unsigned: {unsigned * 1000:.0f} ms")
    print(f"cold_read_{commands}_commands_signed_verified: {signed * 1000:.0f} ms")
    print(f"cold_read_{commands}_commands_signed_by_the_signer_mac: {own * 1000:.0f} ms")
    print(f"cold_read_signed_over_unsigned: {signed / unsigned:.2f} x")
    print(f"cold_read_signer_mac_over_unsigned: {own / unsigned:.2f} x")
    micro("cold_read_extra_per_signed_command", (signed - unsigned) / commands)
    micro("cold_read_extra_per_command_by_mac", (own - unsigned) / commands)


def bench_agent_poll(folder: Path, signer: Signer, trust: Trust, verify: float, repeat: int) -> None:
    url = f"file://{folder}/agent"
    key = command_key("host-00001")
    version = seal_store(open_store(url), signer=signer).put(key, host_command(1).to_json())
    plain = open_store(url)
    sealed = seal_store(open_store(url), trust=trust)
    assert store_audience(plain) == store_audience(sealed)
    unchanged = sealed.get(key, if_version_not=version)
    assert unchanged is not None and unchanged.data == b"" and unchanged.refused is None
    plain_poll = per_call(lambda: plain.get(key, if_version_not=version), 1000, repeat)
    sealed_poll = per_call(lambda: sealed.get(key, if_version_not=version), 1000, repeat)
    micro("agent_poll_unchanged_command_file_store", plain_poll)
    micro("agent_poll_unchanged_command_file_store_sealed", sealed_poll)
    print(f"verify_command_over_one_poll: {verify / plain_poll:.2f} x")
    interval = DEFAULT_POLL_INTERVAL.total_seconds()
    print(f"verify_command_share_of_default_poll_interval: {verify / interval * 100:.5f} %")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commands", type=int, default=10_000, help="commands in the cold-read stores")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per figure (the best is printed)")
    args = parser.parse_args()
    configure_logging("warning", stream=sys.stderr)  # store.created and the like stay off stdout

    signer = Signer.generate("bench")
    trust = Trust([signer.public])
    verify = bench_envelopes(signer, trust, args.repeat)
    bench_sealed_get(signer, trust, args.repeat)
    bench_stored_form(signer, args.commands, args.repeat)
    with tempfile.TemporaryDirectory() as folder:
        bench_agent_poll(Path(folder), signer, trust, verify, args.repeat)
        bench_cold_read(Path(folder), signer, trust, args.commands, args.repeat)


if __name__ == "__main__":
    main()
