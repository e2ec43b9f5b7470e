"""Compare-and-swap across processes: several real processes race for the same key, round after round, and
exactly one wins each round, on both backends."""

from __future__ import annotations

import multiprocessing
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from contract.store import PreconditionFailed, Store, open_store
from contract.store.file import FileStore

WORKERS = 4
ROUNDS = 12


def _contend(url: str, worker: int, rounds: int, barrier: Barrier, results: Any, store: Store | None = None) -> None:
    store = store or open_store(url)
    for round_number in range(rounds):
        # Everyone reads the same version, then everyone tries to swap it.
        barrier.wait(timeout=60)
        current = store.get("race/counter.json")
        assert current is not None
        barrier.wait(timeout=60)
        try:
            store.put_if_version("race/counter.json", f"{round_number}:{worker}".encode(), current.version)
            swapped = True
        except PreconditionFailed:
            swapped = False
        try:
            store.put_if_absent(f"race/claims/{round_number}.json", f"{worker}".encode())
            claimed = True
        except PreconditionFailed:
            claimed = False
        results.put((round_number, worker, swapped, claimed))


def _race(url: str, context: Any, shared_store: Store | None = None) -> None:
    seed = open_store(url)
    seed.put("race/counter.json", b"start")
    barrier = context.Barrier(WORKERS)
    results = context.Queue()
    processes = [
        context.Process(target=_contend, args=(url, worker, ROUNDS, barrier, results, shared_store))
        for worker in range(WORKERS)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in range(WORKERS * ROUNDS)]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    for round_number in range(ROUNDS):
        this_round = [o for o in outcomes if o[0] == round_number]
        assert len(this_round) == WORKERS
        swappers = [worker for _, worker, swapped, _ in this_round if swapped]
        claimers = [worker for _, worker, _, claimed in this_round if claimed]
        assert len(swappers) == 1, f"round {round_number}: swap winners {swappers}"
        assert len(claimers) == 1, f"round {round_number}: create winners {claimers}"
        claim = seed.get(f"race/claims/{round_number}.json")
        assert claim is not None and claim.data == str(claimers[0]).encode()
    last_winner = next(w for r, w, swapped, _ in outcomes if r == ROUNDS - 1 and swapped)
    final = seed.get("race/counter.json")
    assert final is not None and final.data == f"{ROUNDS - 1}:{last_winner}".encode()


@pytest.mark.slow
def test_processes_racing_have_exactly_one_winner_per_round(store_url: str) -> None:
    _race(store_url, multiprocessing.get_context("spawn"))


@pytest.mark.slow
def test_file_store_object_shared_across_fork_still_excludes(tmp_path: Path) -> None:
    """A store opened (and locked) before a fork: children must not share the parent's lock descriptors,
    or flock would let them all in at once."""
    url = f"file://{tmp_path / 'store'}"
    shared = FileStore(url)
    shared.put("warm/up.json", b"opens every stripe's lock file the parent will hand down")
    for index in range(64):
        shared.put(f"warm/{index}.json", b"x")
    _race(url, multiprocessing.get_context("fork"), shared_store=shared)
