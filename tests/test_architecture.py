"""The layering holds, checked on each module's syntax tree (docs/architecture.md#layers).

Every module has a rank; its hundreds are its layer (plain types, I/O, mechanisms, verbs,
composition, edges). An import points to a lower rank, or stays inside its own unit (a module or
package named in RANKS). No edge imports another edge, except that the CLI starts the others. No
import cycles. The environment is read only by the modules that compose the program, and plain
types touch no file. Each module stays small and says what it holds.
"""

from __future__ import annotations

import ast
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "cairn"

LAYERS = {0: "plain types", 1: "I/O", 2: "mechanisms", 3: "verbs", 4: "composition", 5: "edges"}

RANKS: dict[str, int] = {
    # plain types: values and the rules that check them, no I/O
    "cairn.errors": 10,
    "cairn.ids": 20,
    "cairn.hlc": 20,
    "cairn.version": 20,
    "cairn.model": 30,
    "cairn.vector_bytes": 30,
    "cairn.replication": 40,
    "cairn.memory_rules": 40,
    "cairn.protocol": 50,
    "cairn.binary_pages": 55,
    "cairn.keyring_rules": 60,
    "cairn.settings": 60,
    "cairn.agent_text": 60,
    "cairn.views": 60,
    # I/O behind small interfaces
    "cairn.search.matrix": 105,  # the in-memory vector matrix both stores keep
    "cairn.search.ivf": 106,  # the approximate index over it (faiss inverted lists)
    "cairn.store": 110,
    "cairn.master_keys": 110,
    "cairn.remotes": 120,
    "cairn.server.storage": 130,
    # mechanisms
    "cairn.crypto": 210,
    "cairn.embedding": 210,
    "cairn.search": 220,
    "cairn.search.hybrid": 230,
    "cairn.sync.payload_v1": 225,
    "cairn.sync.payload": 230,
    "cairn.sync.merge": 230,
    "cairn.sync.apply": 240,
    "cairn.sync.backoff": 250,
    "cairn.server.limits": 250,
    "cairn.server.notify": 250,
    "cairn.server.metrics": 260,
    "cairn.server.key_cache": 260,
    "cairn.server.seen": 260,
    # the verbs: the device's store, then sync over it; the server's keys, keyrings, hosting
    "cairn.device_store": 310,
    "cairn.sync.status": 315,
    "cairn.sync.trust": 320,
    "cairn.interchange": 320,
    "cairn.repair": 320,
    "cairn.sync.envelopes": 325,
    "cairn.sync.keys": 330,
    "cairn.sync.channel": 330,
    "cairn.sync.push": 335,
    "cairn.sync.pull": 335,
    "cairn.sync.engine": 340,
    "cairn.sync.handoff": 345,
    "cairn.sync.setup": 345,
    "cairn.sync.worker": 350,
    "cairn.sync": 390,
    "cairn.server.keys": 360,
    "cairn.server.hosted_index": 360,
    "cairn.server.keyrings": 370,
    "cairn.server.failures": 370,
    "cairn.server.retention": 370,
    "cairn.server.hosted": 380,
    # composition: settings read, objects wired
    "cairn.config": 410,
    "cairn.wiring": 420,
    "cairn.server.backends": 420,
    "cairn.ephemeral": 425,
    "cairn.server.context": 430,
    "cairn": 450,
    "cairn.http_edge": 460,
    "cairn.http_schemas": 460,
    "cairn.agent_tools": 460,
    "cairn.web": 460,  # what both web UIs share: templates, assets, charts, CSRF checks
    # edges: parse, call, format
    "cairn.api": 510,
    "cairn.mcp_server": 510,
    "cairn.mcp_remote": 510,
    "cairn.server": 510,
    "cairn.server.schemas": 520,
    "cairn.server.routes": 530,
    "cairn.server.mcp": 535,
    "cairn.server.console": 535,  # the admin console's pages at /dashboard
    "cairn.server.app": 540,
    "cairn.cli": 590,
}
"""A module's rank is that of the longest name here that is it or a package holding it (the
package root ``cairn`` ranks by that name alone)."""

EDGES = ("cairn.cli", "cairn.api", "cairn.mcp_server", "cairn.mcp_remote", "cairn.server")
"""The programs' front doors: a module of the edge layer belongs to the one its name starts with."""

ENTRY_POINTS = {"cairn.cli": {"cairn.api", "cairn.server", "cairn.mcp_server", "cairn.mcp_remote"}}
"""Edges that may import another edge: the CLI starts the local API, the sync server and the
MCP servers (over a store, or over a hosted workspace)."""

READS_ENVIRONMENT = {"cairn.config", "cairn.server.backends"}
"""Modules below the edges that may read the environment: the settings of the device and of the
sync server (edges may too; nothing else)."""

NO_IO_IMPORTS = {"sqlite3", "subprocess", "shutil", "tempfile", "httpx", "obstore", "onnxruntime"}
NO_IO_CALLS = {
    "read_text", "read_bytes", "write_text", "write_bytes", "mkdir", "unlink", "rmdir",
    "iterdir", "glob", "rglob", "touch", "exists", "is_file", "is_dir", "stat", "chmod",
}  # fmt: skip
MAX_LINES, MAX_MEDIAN, MAX_SUMMARY = 400, 200, 100


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    imports: set[str] = field(default_factory=set)


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, root: Path
) -> set[str]:
    """The package modules an import statement names (``from a import b``: ``a.b`` when b is a
    module, else ``a``)."""
    top = root.name
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name.split(".")[0] == top}
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    if base.split(".")[0] != top:
        return set()
    found = set()
    for alias in node.names:
        sub = root.parent / Path(*f"{base}.{alias.name}".split("."))
        is_module = sub.with_suffix(".py").exists() or (sub / "__init__.py").exists()
        found.add(f"{base}.{alias.name}" if is_module else base)
    return found


def read_tree(root: Path) -> dict[str, Module]:
    modules = {}
    for path in sorted(root.rglob("*.py")):
        name = module_name(root, path)
        module = Module(name, path, ast.parse(path.read_text(encoding="utf-8"), str(path)))
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                module.imports |= resolve(node, name, path.name == "__init__.py", root)
        module.imports.discard(name)
        modules[name] = module
    return modules


def unit_of(module: str, ranks: dict[str, int]) -> str:
    """The name in ``ranks`` that ranks ``module`` (AssertionError: none does)."""
    parts = module.split(".")
    for n in range(len(parts), 1, -1):
        if ".".join(parts[:n]) in ranks:
            return ".".join(parts[:n])
    if module in ranks:
        return module
    raise AssertionError(f"{module} has no rank; add it to RANKS in tests/test_architecture.py")


def upward_imports(modules: dict[str, Module], ranks: dict[str, int]) -> list[str]:
    found = []
    for module in modules.values():
        unit = unit_of(module.name, ranks)
        for target in sorted(module.imports):
            there = unit_of(target, ranks)
            if there != unit and ranks[there] >= ranks[unit]:
                found.append(f"{module.name} ({ranks[unit]}) imports {target} ({ranks[there]})")
    return found


def edge_of(module: str, ranks: dict[str, int], edges: Sequence[str]) -> str | None:
    """The edge ``module`` belongs to, if it is in the edge layer."""
    if ranks[unit_of(module, ranks)] // 100 != 5:
        return None
    return next((e for e in edges if module == e or module.startswith(f"{e}.")), module)


def edge_to_edge(
    modules: dict[str, Module],
    ranks: dict[str, int],
    edges: Sequence[str],
    entry_points: dict[str, set[str]],
) -> list[str]:
    found = []
    for module in modules.values():
        edge = edge_of(module.name, ranks, edges)
        if edge is None:
            continue
        for target in sorted(module.imports):
            there = edge_of(target, ranks, edges)
            if there not in (None, edge) and there not in entry_points.get(edge, set()):
                found.append(f"{module.name} imports {target}: both are edges")
    return found


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(name: str) -> None:
        index[name] = low[name] = len(index)
        stack.append(name)
        for target in sorted(modules[name].imports & modules.keys()):
            if target not in index:
                visit(target)
                low[name] = min(low[name], low[target])
            elif target in stack:
                low[name] = min(low[name], index[target])
        if low[name] == index[name]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == name:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for name in sorted(modules):
        if name not in index:
            visit(name)
    return found


def environment_reads(module: Module) -> list[int]:
    """Lines that read or change the process environment."""
    lines = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "os" and node.attr in {"environ", "getenv", "putenv", "environb"}:
                lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            if {a.name for a in node.names} & {"environ", "getenv", "putenv", "environb"}:
                lines.append(node.lineno)
    return lines


def io_uses(module: Module) -> list[str]:
    """What in a module touches files, processes or the network."""
    found = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            found += [f"line {node.lineno}: imports {n}" for n in names if n in NO_IO_IMPORTS]
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "open":
                found.append(f"line {node.lineno}: open()")
            elif isinstance(func, ast.Attribute) and func.attr in NO_IO_CALLS:
                found.append(f"line {node.lineno}: .{func.attr}()")
    return found


def layer_violations(
    modules: dict[str, Module], ranks: dict[str, int], reads_environment: set[str]
) -> list[str]:
    found = []
    for module in modules.values():
        layer = ranks[unit_of(module.name, ranks)] // 100
        if layer < 5 and module.name not in reads_environment:
            found += [
                f"{module.name} line {n}: reads the environment" for n in environment_reads(module)
            ]
        if layer == 0:
            found += [f"{module.name} {use}" for use in io_uses(module)]
    return found


MODULES = read_tree(SRC)


def test_every_module_has_a_rank() -> None:
    for name in MODULES:
        unit_of(name, RANKS)


def test_every_rank_names_a_module_or_package() -> None:
    stale = [
        name for name in RANKS if not any(m == name or m.startswith(f"{name}.") for m in MODULES)
    ]
    assert stale == []


def test_imports_point_down_the_ranks() -> None:
    assert upward_imports(MODULES, RANKS) == []


def test_no_edge_imports_another_edge() -> None:
    assert edge_to_edge(MODULES, RANKS, EDGES, ENTRY_POINTS) == []


def test_there_are_no_import_cycles() -> None:
    assert cycles(MODULES) == []


def test_the_environment_is_read_only_by_the_edges_and_config_and_plain_types_do_no_io() -> None:
    assert layer_violations(MODULES, RANKS, READS_ENVIRONMENT) == []


def test_modules_are_small() -> None:
    sizes = {
        name: len(m.path.read_text(encoding="utf-8").splitlines()) for name, m in MODULES.items()
    }
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}
    assert statistics.median(sizes.values()) <= MAX_MEDIAN


def test_every_module_says_in_one_short_sentence_what_it_holds() -> None:
    bad = []
    for name, module in MODULES.items():
        doc = ast.get_docstring(module.tree) or ""
        first = " ".join(doc.strip().split("\n\n")[0].split()).split(". ")[0]
        if not first or len(first) > MAX_SUMMARY:
            bad.append(f"{name}: {first!r}")
    assert bad == []


# The checks themselves, on a small tree that breaks each rule once.

PLANTED = {
    "__init__.py": '"""Root."""\n',
    "kinds.py": '"""Plain."""\nimport os\nimport sqlite3\nX = os.environ.get("A")\nopen("f")\n',
    "base.py": '"""I/O."""\nfrom pkg import kinds\nfrom pkg.verbs import act\n',
    "verbs.py": '"""Verbs."""\nfrom pkg import base\ndef act() -> None: ...\n',
    "cli.py": '"""Edge."""\nfrom pkg import api, verbs\n',
    "api.py": '"""Edge."""\nfrom os import getenv\nfrom . import server\n',
    "server.py": '"""Edge."""\nfrom pkg.api import x\n',
}
PLANTED_RANKS = {"pkg": 0, "pkg.kinds": 10, "pkg.base": 110, "pkg.verbs": 310}
PLANTED_RANKS |= {"pkg.cli": 590, "pkg.api": 510, "pkg.server": 510}


@pytest.fixture
def planted(tmp_path: Path) -> dict[str, Module]:
    root = tmp_path / "pkg"
    root.mkdir()
    for name, text in PLANTED.items():
        (root / name).write_text(text)
    return read_tree(root)


def test_the_checks_find_what_breaks_each_rule(planted: dict[str, Module]) -> None:
    assert upward_imports(planted, PLANTED_RANKS) == [
        "pkg.api (510) imports pkg.server (510)",
        "pkg.base (110) imports pkg.verbs (310)",
        "pkg.server (510) imports pkg.api (510)",
    ]
    edges = ("pkg.cli", "pkg.api", "pkg.server")
    assert edge_to_edge(planted, PLANTED_RANKS, edges, {"pkg.cli": {"pkg.api"}}) == [
        "pkg.api imports pkg.server: both are edges",
        "pkg.server imports pkg.api: both are edges",
    ]
    assert cycles(planted) == [["pkg.api", "pkg.server"], ["pkg.base", "pkg.verbs"]]
    assert layer_violations(planted, PLANTED_RANKS, set()) == [
        "pkg.kinds line 4: reads the environment",
        "pkg.kinds line 3: imports sqlite3",
        "pkg.kinds line 5: open()",
    ]
    assert layer_violations(planted, PLANTED_RANKS, {"pkg.kinds"}) == [
        "pkg.kinds line 3: imports sqlite3",
        "pkg.kinds line 5: open()",
    ]
