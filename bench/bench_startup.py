"""Start-up of the two programs as whole processes: `reconcile --help`, `deploy-agent --help`, and a bare
interpreter for scale (issue 18: each under 0.15 s; before the lazy imports they took 0.36 s and 0.31 s).

Best and median of `--rounds` runs each, wall time of the process from spawn to exit, printed as `name: value unit`.

    .venv/bin/python bench/bench_startup.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def timed(argv: list[str], rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        begin = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - begin)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    cases = {
        "python_bare": [sys.executable, "-c", "pass"],
        "reconcile_help": [str(BIN / "reconcile"), "--help"],
        "deploy_agent_help": [str(BIN / "deploy-agent"), "--help"],
    }
    for name, argv in cases.items():
        times = timed(argv, args.rounds)
        print(f"{name}_best: {min(times):.3f} s")
        print(f"{name}_median: {statistics.median(times):.3f} s")


if __name__ == "__main__":
    main()
