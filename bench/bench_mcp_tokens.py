"""What an agent pays to read Cairn's MCP answers: bytes and tokens per tool result.

A real `cairn mcp` (stdio, the SDK's client) over a fresh store of corpus memories; each tool is
called as an agent would and the whole result is counted: every text block plus the structured
content, serialised as it travels. Tokens are counted with the bundled model's WordPiece
tokenizer, a stand-in for an LLM's tokenizer (no LLM tokenizer ships without a download here):
compare rows with each other, not with an LLM's bill.

.venv/bin/python bench/bench_mcp_tokens.py [--memories 200] [--queries 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.types import CallToolResult

import common
import corpus
from cairn.embedding.onnx import bundled_model_files


def _tokenizer() -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(bundled_model_files()[1]))
    tokenizer.no_truncation()  # the shipped file cuts at the model's 128 tokens
    tokenizer.no_padding()
    return tokenizer


def _wire(result: CallToolResult) -> str:
    """What the agent's client receives of a result: text blocks and structured content."""
    parts = [block.text for block in result.content if block.type == "text"]
    if result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, separators=(",", ":")))
    return "\n".join(parts)


async def _measure(home: Path, memories: int, queries: int) -> dict[str, list[str]]:
    env = {**os.environ, "CAIRN_HOME": str(home)}
    params = StdioServerParameters(
        command=str(common.CAIRN), args=["mcp", "--no-autosync"], env=env, cwd=str(home)
    )
    wires: dict[str, list[str]] = {"remember": [], "recall (10 results)": [], "list (20)": []}
    items = corpus.items(memories)
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            await session.initialize()
            for item in items:
                result = await session.call_tool(
                    "remember",
                    {
                        "content": item.content,
                        "kind": item.kind,
                        "project": item.project,
                        "tags": list(item.tags),
                    },
                )
                wires["remember"].append(_wire(result))
            for item in corpus.query_sample(memories, queries):
                result = await session.call_tool("recall", {"query": item.query, "limit": 10})
                wires["recall (10 results)"].append(_wire(result))
            result = await session.call_tool("list_memories", {"limit": 20})
            wires["list (20)"].append(_wire(result))
    return wires


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memories", type=int, default=200)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    tokenizer = _tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        wires = anyio.run(_measure, Path(tmp), args.memories, args.queries)
    rows = []
    results: dict[str, Any] = {}
    for tool, texts in wires.items():
        sizes = [len(t.encode("utf-8")) for t in texts]
        tokens = [len(tokenizer.encode(t, add_special_tokens=False).ids) for t in texts]
        results[tool] = {
            "calls": len(texts),
            "bytes_mean": round(statistics.fmean(sizes), 1),
            "tokens_mean": round(statistics.fmean(tokens), 1),
        }
        rows.append([tool, len(texts), results[tool]["bytes_mean"], results[tool]["tokens_mean"]])
    common.print_table(
        f"MCP result size ({args.memories} memories)",
        ["tool", "calls", "bytes per result", "tokens per result"],
        rows,
    )
    print(f"\nexample recall result:\n{wires['recall (10 results)'][0][:1500]}", file=sys.stderr)
    common.write_results("bench_mcp_tokens", vars(args) | {"out": None}, results, args.out)


if __name__ == "__main__":
    main()
