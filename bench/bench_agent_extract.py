"""Bundle extraction: the agent's own safe extractors against `unzip` and `tar` on the same archives.

A 10,000-file, ~100 MB bundle (100 folders of 100 files, text-like content that deflates about 25 %),
packed as zip and tgz, unpacked into a fresh folder by each side, alternating, several rounds; the median
of each is printed. Target: the agent within 1.3x of the system tools (issue 3).

    .venv/bin/python bench/bench_agent_extract.py [--rounds 5] [--files 10000] [--megabytes 100] [--dir DIR]

`--dir /dev/shm` measures the extractors on tmpfs, where the disk does not dominate.

Needs `tar` (always present) and, for the zip comparison, `unzip` (`apt-get install unzip`); without unzip
the zip comparison is skipped with a note.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

from agent.fetch import FetchedBundle, unpack_bundle
from contract.logs import configure_logging


def make_tree(root: Path, files: int, total_bytes: int) -> None:
    per_file = total_bytes // files
    folders = max(1, files // 100)
    for index in range(files):
        folder = root / f"dir{index % folders:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        raw = os.urandom(per_file * 3 // 4)
        (folder / f"file{index:05d}.txt").write_bytes(base64.b64encode(raw)[:per_file])
    (root / "appspec.yml").write_text("version: 0.0\nos: linux\n")


def timed(action: Callable[..., None], *args: object) -> float:
    started = time.perf_counter()
    action(*args)
    return time.perf_counter() - started


def fresh(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--megabytes", type=int, default=100)
    parser.add_argument("--dir", default=None, help="scratch folder (default: the system temp folder)")
    options = parser.parse_args()
    configure_logging("warning")

    with tempfile.TemporaryDirectory(prefix="bench-extract-", dir=options.dir) as scratch_text:
        scratch = Path(scratch_text)
        source = scratch / "src"
        make_tree(source, options.files, options.megabytes << 20)
        zip_path = scratch / "bundle.zip"
        with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(source.rglob("*")):
                archive.write(path, path.relative_to(source).as_posix())
        tgz_path = scratch / "bundle.tgz"
        subprocess.run(["tar", "-czf", str(tgz_path), "-C", str(source), "."], check=True)
        out = scratch / "out"
        results: dict[str, list[float]] = {k: [] for k in ("zip_agent", "zip_unzip", "tgz_agent", "tgz_tar")}
        has_unzip = shutil.which("unzip") is not None
        def agent(archive: Path, kind: str, target: Path) -> None:
            unpack_bundle(FetchedBundle(archive, kind), target)  # type: ignore[arg-type]

        def tool(command: list[str]) -> None:
            subprocess.run(command, check=True)

        for _ in range(options.rounds):
            # Every side starts from an empty folder that exists; clearing the previous round is not timed.
            target = fresh(out)
            results["tgz_agent"].append(timed(agent, tgz_path, "tgz", target))
            target = fresh(out)
            results["tgz_tar"].append(timed(tool, ["tar", "-xzpf", str(tgz_path), "-C", str(target)]))
            target = fresh(out)
            results["zip_agent"].append(timed(agent, zip_path, "zip", target))
            if has_unzip:
                target = fresh(out)
                results["zip_unzip"].append(timed(tool, ["unzip", "-qo", str(zip_path), "-d", str(target)]))
        median = {key: statistics.median(values) for key, values in results.items() if values}
        print(f"bundle_files: {options.files} files")
        print(f"bundle_size: {sum(p.stat().st_size for p in source.rglob('*') if p.is_file()) / 1e6:.1f} MB")
        print(f"zip_size: {zip_path.stat().st_size / 1e6:.1f} MB")
        print(f"tgz_size: {tgz_path.stat().st_size / 1e6:.1f} MB")
        print(f"extract_tgz_agent: {median['tgz_agent'] * 1000:.0f} ms")
        print(f"extract_tgz_tar: {median['tgz_tar'] * 1000:.0f} ms")
        print(f"extract_tgz_ratio: {median['tgz_agent'] / median['tgz_tar']:.2f} x")
        print(f"extract_zip_agent: {median['zip_agent'] * 1000:.0f} ms")
        if has_unzip:
            print(f"extract_zip_unzip: {median['zip_unzip'] * 1000:.0f} ms")
            print(f"extract_zip_ratio: {median['zip_agent'] / median['zip_unzip']:.2f} x")
        else:
            print("note: unzip is not installed (apt-get install unzip); zip comparison skipped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
