"""Modules import only modules to their left in the flow; kernels import numpy and nothing else."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "mf_spark"
ORDER = ["types", "errors", "config", "cli", "session", "phases", "fs", "kernels", "read", "validate", "index", "split", "local",
         "blocks", "halfstep", "stream", "join", "checkpoint", "topn", "model", "days", "als", "evaluate", "prepare", "compare", "tune", "recommend", "similar",
         "report", "write", "tracking"]


def _module(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    return rel.parts[0]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mf_spark"):
            parts = node.module.split(".")
            if len(parts) > 1:
                found.add(parts[1])
            else:
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("mf_spark."))
    return found


def test_modules_import_only_leftwards():
    bad = []
    for path in PKG.rglob("*.py"):
        mod = _module(path)
        if mod in ("__init__", "ml") or mod not in ORDER:
            continue
        for dep in _imports(path) - {mod, "__version__"}:
            if dep in ORDER and ORDER.index(dep) > ORDER.index(mod):
                bad.append(f"{path.relative_to(PKG)} imports {dep}")
    assert not bad, bad


def test_every_module_is_placed():
    mods = {_module(p) for p in PKG.rglob("*.py")} - {"__init__", "ml"}
    assert mods <= set(ORDER), mods - set(ORDER)


def test_kernels_import_only_numpy():
    """And numba, in the one compiled kernel module; never Spark."""
    for path in (PKG / "kernels").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                allowed = ("numpy", "__future__", "dataclasses", "typing", "math") + \
                    (("numba", "importlib") if path.name == "compiled.py" else ())
                assert name.split(".")[0] in allowed or name.startswith("mf_spark.kernels"), \
                    f"{path.name} imports {name}"
