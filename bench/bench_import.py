"""The JSON Lines import with vectors (``cairn import``'s path), alone: memories/s and a profile.

Lines are made as ``bench_million`` makes them (the cached ``--source`` store's real memories,
then near copies: PARTLY SYNTHETIC), ``bench_million.CHUNK`` at a time, and are not timed; each
chunk is imported into a store in a temporary folder, which is deleted after. ``--onto`` copies
an existing store there first, so the rate is measured at that store's size (start past its
lines with ``--skip``, so every text is new to it). Wall time and CPU time are both reported: a
busy machine slows the first far more than the second. Parsing alone is timed on the first
chunk (``_parse``, the import's per-line JSON, base64 and validation step).

    .venv/bin/python bench/bench_import.py --source 10000 --size 1000000 [--profile]
    .venv/bin/python bench/bench_import.py --source 10000 --size 30000 \
        --onto bench/.cache/near-copies-store-v1-...-1000000.db --skip 1000000
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
    parser.add_argument("--prepare", action="store_true", help="then build the vector index")
    args = parser.parse_args()
    real = real_memories(args.source)
    with tempfile.TemporaryDirectory(prefix="bench-import-") as folder:
        path = Path(folder) / "store.db"
        if args.onto:
            log(f"copying {args.onto}")
            shutil.copyfile(args.onto, path)
        with open_store(path) as store:
            before = store.count()
            profiler = cProfile.Profile() if args.profile else None
            seconds = cpu = parse_s = 0.0
            done = parsed = 0
            for lines in line_chunks(real, args.skip + args.size, args.skip):
                if not parsed:
                    start = time.perf_counter()
                    for line in lines:
                        jsonl._parse(line, store)
                    parse_s, parsed = time.perf_counter() - start, len(lines)
                start, started_cpu = time.perf_counter(), time.process_time()
                if profiler:
                    profiler.enable()
                report = jsonl.import_(store, lines)
                if profiler:
                    profiler.disable()
                seconds += time.perf_counter() - start
                cpu += time.process_time() - started_cpu
                if report.errors or report.embedded or report.imported != len(lines):
                    raise SystemExit(f"the import went wrong: {report.to_dict()}")
                done += len(lines)
                log(f"  {before + done:,} memories: {done / seconds:,.0f} memories/s so far")
            print(
                f"store held {before:,}; imported {done:,} in {seconds:.1f} s = "
                f"{done / seconds:,.0f} memories/s, {done / cpu:,.0f} per CPU second; parsing "
                f"alone {parsed / parse_s:,.0f} lines/s" + (" (cProfile on)" if profiler else "")
            )
            if profiler:
                print(top_functions(profiler, 25))
            if args.prepare:
                start = time.perf_counter()
                store.index.prepare()
                print(f"vector index built and saved in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
