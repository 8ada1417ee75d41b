"""Cold start as a user meets it: `cairn recall` as a process, and `cairn mcp` to a first answer.

`cairn mcp --remote` (the thin relay to a hosted workspace of a sync server started here, on
127.0.0.1) is timed the same way: from spawning it to its first answers, so beside the local
server's figures the difference is what the relay saves by loading no store, model or SDK.

Both run against a private copy of the cached 10k store (CAIRN_DB), with an empty CAIRN_HOME.
`cairn --version` is timed too: the floor that interpreter start-up and CLI imports set.
The MCP client is the SDK's own (``mcp.ClientSession`` over ``stdio_client``); the time runs from
spawning the server to the first answered ``recall`` call.

.venv/bin/python bench/bench_coldstart.py [--size 10000] [--runs 7]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from common import CACHE, ROOT, Server, copy_store, log, print_table, stats_ms, write_results

CAIRN = ROOT / ".venv" / "bin" / "cairn"
QUERIES = (
    "why did we pick httpx for the billing service",
    "checkout getting 503 errors",
    "where is the ledger worker configured",
    "how do we release the search indexer",
    "deadlock on the payments table",
    "flaky auth-service tests",
    "default timeout for requests calls",
    "who maintains fraud-gateway",
)


def cli_runs(command: list[str], env: dict[str, str], runs: int) -> list[float]:
    subprocess.run(command, env=env, check=True, capture_output=True)  # warm the page cache
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, env=env, check=True, capture_output=True)
        out.append(time.perf_counter() - start)
    return out


async def mcp_once(env: dict[str, str], query: str, warm_calls: int) -> dict[str, float]:
    params = StdioServerParameters(command=str(CAIRN), args=["mcp"], env=env)
    start = time.perf_counter()
    with open(os.devnull, "w") as errlog:
        async with stdio_client(params, errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                initialized = time.perf_counter()
                result = await session.call_tool("recall", {"query": query})
                answered = time.perf_counter()
                if result.is_error:
                    raise RuntimeError(f"recall failed over MCP: {result.content}")
                warm = []
                for i in range(warm_calls):
                    t = time.perf_counter()
                    await session.call_tool("recall", {"query": QUERIES[i % len(QUERIES)]})
                    warm.append(time.perf_counter() - t)
    return {
        "initialize_s": initialized - start,
        "first_recall_s": answered - start,
        "warm_recall_p50_s": statistics.median(warm) if warm else float("nan"),
    }


async def remote_once(url: str, key: str, query: str) -> dict[str, float]:
    params = StdioServerParameters(
        command=str(CAIRN), args=["mcp", "--remote", url], env={"CAIRN_API_KEY": key}
    )
    start = time.perf_counter()
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        initialized = time.perf_counter()
        await session.list_tools()
        listed = time.perf_counter()
        result = await session.call_tool("recall", {"query": query})
        answered = time.perf_counter()
        if result.is_error:
            raise RuntimeError(f"recall failed through the relay: {result.content}")
    return {
        "initialize_s": initialized - start,
        "tools_s": listed - start,
        "first_recall_s": answered - start,
    }


def remote_runs(tmp: Path, runs: int) -> list[dict[str, float]]:
    """A sync server with a hosted workspace of a few memories, and the relay spawned ``runs``
    times against it."""
    with Server(tmp / "server", mode="hosted") as server:
        for text in QUERIES:  # what the recalls find (the first also loads the server's model)
            httpx.post(
                f"{server.url}/v1/remember",
                json={"content": f"Notes on: {text}"},
                headers={"Authorization": f"Bearer {server.key}"},
                timeout=60,
            ).raise_for_status()
        return [
            asyncio.run(remote_once(server.url, server.key, QUERIES[i % len(QUERIES)]))
            for i in range(runs)
        ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10_000, help="memories in the store")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    if not CAIRN.exists():
        raise SystemExit(f"{CAIRN} is missing; install Cairn (make install) first")
    probe = subprocess.run([str(CAIRN), "--help"], capture_output=True, text=True, check=False)
    if probe.returncode != 0 or " mcp " not in probe.stdout:
        raise SystemExit(f"`cairn --help` does not list `mcp` yet:\n{probe.stdout}{probe.stderr}")

    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp_name:
        tmp = Path(tmp_name)
        env = {
            **os.environ,
            "CAIRN_HOME": str(tmp / "home"),
            "CAIRN_DB": str(copy_store(args.size, tmp / "cairn.db")),
        }
        log("cairn --version")
        version = cli_runs([str(CAIRN), "--version"], env, args.runs)
        recall: list[float] = []
        log(f"cairn recall x {args.runs}")
        for i in range(args.runs):
            recall += cli_runs([str(CAIRN), "recall", QUERIES[i % len(QUERIES)]], env, 1)
        recall_json = cli_runs([str(CAIRN), "recall", QUERIES[0], "--json"], env, args.runs)
        log(f"cairn mcp x {args.runs}")
        mcp_env = {k: env[k] for k in ("CAIRN_HOME", "CAIRN_DB")}
        mcp_runs = [
            asyncio.run(mcp_once(mcp_env, QUERIES[i % len(QUERIES)], 20)) for i in range(args.runs)
        ]
        shutil.rmtree(tmp / "home", ignore_errors=True)
        log(f"cairn mcp --remote x {args.runs}")
        remote = remote_runs(tmp, args.runs)

    results: dict[str, Any] = {
        "cli_version": stats_ms(version),
        "cli_recall": stats_ms(recall),
        "cli_recall_json": stats_ms(recall_json),
        "mcp_initialize": stats_ms([r["initialize_s"] for r in mcp_runs]),
        "mcp_first_recall": stats_ms([r["first_recall_s"] for r in mcp_runs]),
        "mcp_warm_recall": stats_ms([r["warm_recall_p50_s"] for r in mcp_runs]),
        "remote_initialize": stats_ms([r["initialize_s"] for r in remote]),
        "remote_tools": stats_ms([r["tools_s"] for r in remote]),
        "remote_first_recall": stats_ms([r["first_recall_s"] for r in remote]),
    }
    print_table(
        f"Cold start on a {args.size:,}-memory store ({args.runs} runs each; ms)",
        ["what", "median", "p95", "min", "max"],
        [
            [
                label,
                results[key]["p50_ms"],
                results[key]["p95_ms"],
                results[key]["min_ms"],
                results[key]["max_ms"],
            ]
            for key, label in (
                ("cli_version", "`cairn --version` (start-up floor)"),
                ("cli_recall", "`cairn recall QUERY` (process wall time)"),
                ("cli_recall_json", "`cairn recall QUERY --json`"),
                ("mcp_initialize", "`cairn mcp`: spawn to initialized"),
                ("mcp_first_recall", "`cairn mcp`: spawn to first recall answered"),
                ("mcp_warm_recall", "`cairn mcp`: warm recall round trip (median of 20)"),
                ("remote_initialize", "`cairn mcp --remote`: spawn to initialized"),
                ("remote_tools", "`cairn mcp --remote`: spawn to tools listed"),
                ("remote_first_recall", "`cairn mcp --remote`: spawn to first recall answered"),
            )
        ],
    )
    write_results("bench_coldstart", vars(args), results)


if __name__ == "__main__":
    main()
