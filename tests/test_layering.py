"""The data flows one way through the packages: a module imports only what lies before it in FLOW
(packages first, then the modules inside a package); kernels import numpy and nothing else."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "mf_spark"
# Each entry imports only entries above it (and its own package's __init__ exports nothing it needs).
FLOW = [
    "core.types",
    "core.errors",
    "core.config",
    "core.session",
    "core.fs_tasks",
    "core.fs",
    "kernels",
    "data.read",
    "data.validate",
    "data.index",
    "data.split",
    "data.local",
    "data.ready",
    "data.front",
    "data.prepare",
    "als.blocks",
    "als.halfstep",
    "als.engines.join",
    "als.engines.frames",
    "als.engines.held",
    "als.engines.stream",
    "als.checkpoint",
    "als.days",
    "als.loop",
    "model.topn",
    "model.features",
    "model.factors",
    "model.similar",
    "model.warm",
    "model",
    "evaluate",
    "run.phases",
    "run.cli",
    "run.tracking",
    "run.write",
    "run.report",
    "run.compare",
    "run.tune",
    "run.tables",
    "run.pipeline",
    "ml",
]


def _place(dotted: str) -> int | None:
    """Index in FLOW of the longest entry that `dotted` (a module path below mf_spark) lies in."""
    best = None
    for n, entry in enumerate(FLOW):
        if dotted == entry or dotted.startswith(entry + "."):
            if best is None or len(entry) > len(FLOW[best]):
                best = n
    if best is None:  # a package's own __init__: after everything in it
        inside = [n for n, entry in enumerate(FLOW) if entry.startswith(dotted + ".")]
        best = max(inside) if inside else None
    return best


def _module(path: Path) -> str:
    parts = list(path.relative_to(PKG).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.AST) -> set[str]:
    """Modules below mf_spark that the code imports at run time (TYPE_CHECKING blocks left out)."""
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if _type_checking(node):
            continue
        stack.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mf_spark"):
            base = node.module.split(".", 1)[1] if "." in node.module else ""
            found.update(
                f"{base}.{a.name}".strip(".") if _place(f"{base}.{a.name}".strip(".")) is not None else base
                for a in node.names
            )
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith("mf_spark."))
    return {f for f in found if f}


def _files():
    return [p for p in PKG.rglob("*.py") if p.name != "__init__.py" or p.parent != PKG]


def test_modules_import_only_upstream():
    bad = []
    for path in _files():
        mod = _module(path)
        here = _place(mod)
        for dep in _imports(ast.parse(path.read_text())):
            there = _place(dep)
            if there is not None and there > here:
                bad.append(f"{path.relative_to(PKG)} imports {dep}")
    assert not bad, bad


def test_every_module_is_placed():
    unplaced = [_module(p) for p in _files() if _place(_module(p)) is None]
    assert not unplaced, unplaced


def test_kernels_import_only_numpy():
    """And numba, in the one compiled kernel module (with what caching its machine code needs); never Spark."""
    for path in (PKG / "kernels").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            for name in names:
                allowed = ("numpy", "__future__", "dataclasses", "typing", "math") + (
                    ("numba", "importlib", "hashlib", "os", "tempfile", "time", "fcntl")
                    if path.name == "compiled.py"
                    else ()
                )
                assert name.split(".")[0] in allowed or name.startswith("mf_spark.kernels"), (
                    f"{path.name} imports {name}"
                )
