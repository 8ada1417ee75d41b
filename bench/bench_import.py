"""The JSON Lines import with vectors (``cairn import``'s path), alone: memories/s and a profile.

Lines are made as ``bench_million`` makes them (the cached ``--source`` store's real memories,
then near copies, PARTLY SYNTHETIC) and are not timed. ``--onto`` copies an existing store to a
temporary folder and imports into the copy, so the rate is measured at that store's size (the
copies' variant numbers start past ``--skip`` lines, so every text is new there).

    .venv/bin/python bench/bench_import.py --source 10000 --size 50000 \
        [--onto bench/.cache/near-copies-...-1000000.db --skip 1000000] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import shutil
import tempfile
import time
from pathlib import Path

from bench_million import line_chunks, real_memories, top_functions
from cairn.interchange import jsonl
from common import log, open_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=int, default=10_000, help="the cached real store")
    parser.add_argument("--size", type=int, default=50_000, help="lines to import")
    parser.add_argument("--onto", type=Path, help="a store to copy and import into")
    parser.add_argument("--skip", type=int, default=0, help="lines of the corpus to pass over")
    parser.add_argument("--profile", action="store_true", help="cProfile the import")
    args = parser.parse_args()
    real = real_memories(args.source)
    lines = [
        line for chunk in line_chunks(real, args.skip + args.size, args.skip) for line in chunk
    ]
    with tempfile.TemporaryDirectory(prefix="bench-import-") as folder:
        path = Path(folder) / "store.db"
        if args.onto:
            log(f"copying {args.onto}")
            shutil.copyfile(args.onto, path)
        with open_store(path) as store:
            before = store.count()
            start = time.perf_counter()
            parse = [jsonl._parse(line, store) for line in lines]
            parse_s = time.perf_counter() - start
            del parse
            profiler = cProfile.Profile() if args.profile else None
            start, cpu = time.perf_counter(), time.process_time()
            if profiler:
                profiler.enable()
            report = jsonl.import_(store, lines)
            if profiler:
                profiler.disable()
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            if report.errors or report.embedded or report.imported != len(lines):
                raise SystemExit(f"the import went wrong: {report.to_dict()}")
        print(
            f"store held {before:,}; imported {len(lines):,} in {seconds:.2f} s = "
            f"{len(lines) / seconds:,.0f} memories/s ({len(lines) / cpu:,.0f} per CPU second, "
            f"which a busy machine disturbs less); parsing alone {parse_s:.2f} s "
            f"({len(lines) / parse_s:,.0f} lines/s)" + (" (under cProfile)" if profiler else "")
        )
        if profiler:
            print(top_functions(profiler, 25))


if __name__ == "__main__":
    main()
