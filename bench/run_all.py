"""Run every benchmark in turn (what `make bench` does); each prints its tables and writes JSON.

The first run builds the cached 10k and 100k stores under bench/.cache/ (~10 min of embedding on
2 idle cores); later runs reuse them. ``--quick`` uses small sizes, for checking the scripts.

.venv/bin/python bench/run_all.py [--quick] [--only NAME ...]   (embed ingest recall vector
    coldstart sync sync_postgres pages crypto autosync objects load idle hosted mcp_tokens
    peers million web)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
SYNC_POSTGRES_JSON = str(BENCH / "results" / "bench_sync_postgres.json")

# name: (script, its arguments in a full run, in a --quick run). Every table in
# docs/performance.md comes from one of these, with these arguments.
PLAN: dict[str, tuple[str, list[str], list[str]]] = {
    "embed": ("bench_embed.py", [], ["--texts", "256", "--queries", "50"]),
    "ingest": (
        "bench_ingest.py",
        ["--base", "10000", "100000"],
        ["--bulk", "256", "--base", "1000", "--singles", "30"],
    ),
    "recall": ("bench_recall.py", [], ["--sizes", "1000", "--queries", "50"]),
    "vector": (
        "bench_vector.py",
        [],
        ["--sizes", "10000", "--queries", "50", "--real", "1000"],
    ),
    "coldstart": ("bench_coldstart.py", [], ["--size", "1000", "--runs", "2"]),
    "sync": ("bench_sync.py", [], ["--quick"]),
    "sync_postgres": (
        "bench_sync.py",
        ["--sizes", "10000", "--runs", "3", "--postgres", "--json", SYNC_POSTGRES_JSON],
        ["--quick", "--postgres", "--json", SYNC_POSTGRES_JSON],
    ),
    "pages": ("bench_pages.py", [], ["--repeat", "3"]),
    "crypto": ("bench_crypto.py", [], ["--quick"]),
    "autosync": ("bench_autosync.py", ["--memories", "60"], ["--quick"]),
    "objects": ("bench_objects.py", [], ["--quick"]),
    "load": ("bench_load.py", [], ["--quick"]),
    "idle": ("bench_idle.py", [], ["--devices", "100", "--seconds", "10", "--trials", "5"]),
    "hosted": ("bench_hosted.py", [], ["--quick"]),
    "mcp_tokens": ("bench_mcp_tokens.py", [], ["--memories", "30", "--queries", "5"]),
    "peers": ("bench_peers.py", [], ["--quick"]),
    "million": (
        "bench_million.py",
        [],
        ["--source", "2000", "--size", "6000", "--queries", "30"],
    ),
    "web": ("bench_web.py", [], ["--size", "12000", "--near-copies", "10000", "--repeat", "3"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the scripts")
    parser.add_argument("--only", nargs="+", choices=list(PLAN), default=list(PLAN))
    args = parser.parse_args()
    failed = []
    for name in args.only:
        script, full, quick = PLAN[name]
        command = [sys.executable, str(BENCH / script), *(quick if args.quick else full)]
        print(f"\n## bench_{name}  (`{' '.join(command[1:])}`)", flush=True)
        start = time.perf_counter()
        if subprocess.run(command, check=False).returncode != 0:
            failed.append(name)
        print(f"\n({time.perf_counter() - start:,.0f} s)", flush=True)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
