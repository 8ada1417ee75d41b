"""Imports point down the layers of DESIGN.md §9; a cycle means the layering is wrong."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "cairn"

LAYERS: dict[str, int] = {
    # plain types, no I/O
    "cairn.model": 0,
    "cairn.errors": 0,
    "cairn.ids": 0,
    "cairn.hlc": 0,
    "cairn.settings": 0,
    "cairn.protocol": 0,
    "cairn.agent_text": 0,
    "cairn.views": 0,
    "cairn.keyring_rules": 0,
    "cairn.version": 0,
    "cairn.replication": 0,
    "cairn.memory_rules": 0,
    # I/O behind small interfaces
    "cairn.store": 1,
    "cairn.master_keys": 1,
    "cairn.remotes": 1,
    "cairn.server.storage": 1,
    "cairn.search.matrix": 1,
    # mechanisms
    "cairn.embedding": 2,
    "cairn.search": 2,
    "cairn.sync": 2,
    "cairn.crypto": 2,
    # the verbs
    "cairn.device_store": 3,
    "cairn.interchange": 3,
    "cairn.sync.engine": 3,
    "cairn.repair": 3,
    "cairn.sync.channel": 3,
    "cairn.sync.push": 3,
    "cairn.sync.pull": 3,
    "cairn.sync.trust": 3,
    "cairn.sync.envelopes": 3,
    "cairn.sync.keys": 3,
    "cairn.sync.status": 3,
    "cairn.sync.handoff": 3,
    "cairn.sync.worker": 3,
    "cairn.sync.setup": 3,
    # the Python API's composition root (cairn/__init__.py)
    "cairn": 4,
    "cairn.config": 4,
    # shared by the edges, owned by none
    "cairn.http_edge": 4,
    "cairn.http_schemas": 4,
    # edges: parse, call, format
    "cairn.cli": 5,
    "cairn.mcp_server": 5,
    "cairn.api": 5,
    "cairn.server": 5,
}


def layer_of(module: str) -> tuple[str, int]:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in LAYERS:
            return name, LAYERS[name]
    raise AssertionError(f"{module} is in no layer; add it to LAYERS in this test")


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "cairn"]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            anchor = module.split(".")
            anchor = anchor if is_package else anchor[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        if base.split(".")[0] != "cairn":
            return []
        names = []
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            sub = SRC.parent / Path(*candidate.split("."))
            names.append(candidate if sub.with_suffix(".py").exists() or sub.is_dir() else base)
        return names
    return []


def test_every_source_module_has_a_layer() -> None:
    for path in SRC.rglob("*.py"):
        layer_of(module_name(path))


def test_imports_point_down_the_layers() -> None:
    violations = []
    for path in sorted(SRC.rglob("*.py")):
        module = module_name(path)
        home, rank = layer_of(module)
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            for target in imported(node, module, path.name == "__init__.py"):
                there, target_rank = layer_of(target)
                if target_rank > rank:
                    violations.append(f"{module} ({home}) imports {target} ({there})")
    assert violations == []


def test_no_edge_imports_another_edge() -> None:
    """The CLI starts the others (it is their entry point); the rest share only what lies below."""
    violations = []
    for path in sorted(SRC.rglob("*.py")):
        module = module_name(path)
        home, rank = layer_of(module)
        if rank < 5 or home == "cairn.cli":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            for target in imported(node, module, path.name == "__init__.py"):
                there, target_rank = layer_of(target)
                if target_rank == 5 and there != home:
                    violations.append(f"{module} ({home}) imports {target} ({there})")
    assert violations == []


def test_nothing_below_the_edges_reads_the_environment() -> None:
    allowed = {"cairn.config"}
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        module = module_name(path)
        if layer_of(module)[1] >= 4 or module in allowed:
            continue
        text = path.read_text()
        if "os.environ" in text or "os.getenv" in text:
            offenders.append(module)
    assert offenders == []
