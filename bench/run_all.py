"""Run every benchmark in turn (what `make bench` does); each prints its tables and writes JSON.

The first run builds the cached 10k and 100k stores under bench/.cache/ (~10 min of embedding on
2 idle cores); later runs reuse them. ``--quick`` uses small sizes, for checking the scripts.

.venv/bin/python bench/run_all.py [--quick] [--only NAME ...]   (embed ingest recall vector
    coldstart sync crypto autosync objects load)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent

FULL: dict[str, list[str]] = {
    "embed": [],
    "ingest": ["--base", "10000", "100000"],
    "recall": [],
    "vector": [],
    "coldstart": [],
    "sync": [],
    "crypto": [],
    "autosync": [],
    "objects": [],
    "load": [],
}
QUICK: dict[str, list[str]] = {
    "embed": ["--texts", "256", "--queries", "50"],
    "ingest": ["--bulk", "256", "--base", "1000", "--singles", "30"],
    "recall": ["--sizes", "1000", "--queries", "50"],
    "vector": ["--sizes", "10000", "--queries", "50", "--real", "1000"],
    "coldstart": ["--size", "1000", "--runs", "2"],
    "sync": ["--quick"],
    "crypto": ["--quick"],
    "autosync": ["--quick"],
    "objects": ["--quick"],
    "load": ["--quick"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the scripts")
    parser.add_argument("--only", nargs="+", choices=list(FULL), default=list(FULL))
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    failed = []
    for name in args.only:
        command = [sys.executable, str(BENCH / f"bench_{name}.py"), *plan[name]]
        print(f"\n## bench_{name}  (`{' '.join(command[1:])}`)", flush=True)
        start = time.perf_counter()
        if subprocess.run(command, check=False).returncode != 0:
            failed.append(name)
        print(f"\n({time.perf_counter() - start:,.0f} s)", flush=True)
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
