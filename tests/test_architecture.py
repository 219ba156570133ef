"""The architecture of docs/architecture.md, enforced: every import of every met_core module goes the way its tables
allow (parsed from the page itself, so the page and the rule cannot drift apart), and the NumPy side never loads
torch, even indirectly (a fresh interpreter imports it and looks at sys.modules)."""

from __future__ import annotations

import ast
import importlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import ROOT

PACKAGE = ROOT / "met_core"
DOC = ROOT / "docs" / "architecture.md"
TORCH_LIBRARIES = ("torch", "torchvision", "timm")  # what must never be in sys.modules after the NumPy side


@dataclass(frozen=True)
class Rules:
    side: dict[str, str]  # part -> base, numpy, torch or entry
    eager: dict[str, set[str]]  # part -> other parts it may import anywhere
    lazy: dict[str, set[str]]  # part -> other parts it may import only lazily
    banned: dict[str, set[str]]  # side -> third-party top-level packages it may not import


def _table(text: str, header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header row starts with `header`, cells stripped of backticks."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().replace("`", "") for c in line.strip().strip("|").split("|")])
    return rows


def _names(cell: str) -> set[str]:
    return {n.strip() for n in cell.split(",") if n.strip()}


def read_rules(text: str) -> Rules:
    side, eager, lazy = {}, {}, {}
    for part, s, may, lazily in _table(text, "| package | side | may import |"):
        side[part], eager[part], lazy[part] = s, _names(may), _names(lazily)
    banned = {s: _names(libs) for s, libs in _table(text, "| side | may not import |")}
    return Rules(side, eager, lazy, banned)


RULES = read_rules(DOC.read_text())


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


MODULES = modules()


def part_of(module: str) -> str | None:
    """The table's row a met_core module belongs to (the longest package prefix), None for the root package."""
    best = None
    for part in RULES.side:
        if (module == part or module.startswith(part + ".")) and (best is None or len(part) > len(best)):
            best = part
    return best


@dataclass(frozen=True)
class Import:
    target: str  # a module name: met_core.x.y, or a third-party module
    names: tuple[str, ...]  # from-import names (empty for `import x`)
    line: int
    lazy: bool  # inside a function, under an `if` or under `if TYPE_CHECKING:`


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    base = package.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str, path: Path, source: str | None = None) -> list[Import]:
    """Every import statement of a module (its file, or `source` in its place), with where it runs: at import time
    (eager) or lazily."""
    out: list[Import] = []

    def visit(nodes: list[ast.stmt], lazy: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                out.extend(Import(a.name, (), node.lineno, lazy) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                full = _resolve(module, path, node)
                for a in node.names:  # `from pkg import submodule` imports the submodule
                    sub = f"{full}.{a.name}"
                    target = sub if sub in MODULES else full
                    out.append(Import(target, () if target == sub else (a.name,), node.lineno, lazy))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(node.body, True)
            elif isinstance(node, ast.If):
                visit(node.body + node.orelse, True)
            else:  # class bodies, try, with, loops: visit what they hold, as lazy as where they are
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.stmt):
                        visit([child], lazy)
                    elif isinstance(child, ast.excepthandler):
                        visit(child.body, lazy)

    visit(ast.parse(path.read_text() if source is None else source, str(path)).body, False)
    return out


ALL_IMPORTS = {m: imports(m, p) for m, p in MODULES.items()}


def violations() -> list[str]:
    bad = []
    for module, found in ALL_IMPORTS.items():
        part = part_of(module)
        where = f"{MODULES[module].relative_to(ROOT)}"
        if part is None:
            continue  # met_core/__init__.py: __version__ only (checked below)
        for imp in found:
            if imp.target == "met_core" or not imp.target.startswith("met_core"):
                top = imp.target.split(".")[0]
                if top in RULES.banned.get(RULES.side[part], set()):
                    bad.append(
                        f"{where}:{imp.line}: {RULES.side[part]}-side {module} imports {imp.target} "
                        f"(banned there by docs/architecture.md)"
                    )
                continue
            if imp.target not in MODULES:
                bad.append(f"{where}:{imp.line}: {module} imports {imp.target}, which does not exist")
                continue
            other = part_of(imp.target)
            if other == part or other in RULES.eager[part]:
                continue
            if other in RULES.lazy[part] and imp.lazy:
                continue
            how = "at import time" if other in RULES.lazy[part] else "at all"
            bad.append(
                f"{where}:{imp.line}: {module} ({RULES.side[part]} side) imports {imp.target} "
                f"({RULES.side.get(other, '?')} side), which docs/architecture.md does not allow {how}"
            )
    return bad


def test_the_tables_cover_every_module():
    assert set(RULES.side.values()) <= {"base", "numpy", "torch", "entry"}
    for part, allowed in {**RULES.eager, **RULES.lazy}.items():
        assert allowed <= set(RULES.side), f"{part} names an unknown part: {allowed - set(RULES.side)}"
    orphans = [m for m in MODULES if part_of(m) is None and m != "met_core"]
    assert not orphans, f"modules in no row of docs/architecture.md's table: {orphans}"
    assert "torch" in RULES.banned["numpy"] and "torch" in RULES.banned["base"]
    root = ALL_IMPORTS["met_core"]
    assert not root, f"met_core/__init__.py imports {[i.target for i in root]}; it holds __version__ only"


def test_every_import_goes_the_way_the_architecture_allows():
    bad = violations()
    assert not bad, "\n" + "\n".join(bad)


def test_every_imported_name_exists():
    """A moved or split module leaves no import behind that only fails when its function runs."""
    missing = []
    for module, found in ALL_IMPORTS.items():
        for imp in found:
            if not imp.target.startswith("met_core") or not imp.names:
                continue
            if imp.target.startswith("met_core.app"):
                pytest.importorskip("streamlit")
            target = importlib.import_module(imp.target)
            missing += [
                f"{MODULES[module].relative_to(ROOT)}:{imp.line}: {imp.target} has no {n}"
                for n in imp.names
                if n != "*" and not hasattr(target, n)
            ]
    assert not missing, "\n" + "\n".join(missing)


def torch_free_modules() -> list[str]:
    """What must import without torch: the base and NumPy side, and the entry points' modules (their module-level
    imports are the NumPy side's); not the app's page scripts (they draw a page when imported)."""
    out = []
    for m, path in MODULES.items():
        part = part_of(m)
        if part is None or m == "met_core.__main__":
            continue
        if RULES.side[part] in ("base", "numpy"):
            out.append(m)
        elif RULES.side[part] == "entry" and path.parent.name != "views" and path.name != "main.py":
            out.append(m)
    return out


def test_the_numpy_side_never_imports_torch():
    """In a fresh interpreter: every module of the base and NumPy side, every library those import lazily (SciPy,
    scikit-learn, umap-learn, ...), met_core.cli and the app's modules; then torch, torchvision and timm must not
    be in sys.modules, nor any torch-side part of met_core."""
    numpy_side = [m for m in torch_free_modules() if RULES.side[part_of(m)] in ("base", "numpy")]
    lazy_libraries = sorted(
        {i.target for m in numpy_side for i in ALL_IMPORTS[m] if i.lazy and not i.target.startswith("met_core")}
    )
    entry = [m for m in torch_free_modules() if m not in numpy_side]
    torch_side = sorted(p for p, s in RULES.side.items() if s == "torch")
    code = f"""
import importlib, json, sys
for m in {numpy_side!r}:
    importlib.import_module(m)
for lib in {lazy_libraries!r}:
    try:
        importlib.import_module(lib)
    except ImportError:
        pass  # an optional library that is not installed loads nothing
numpy_side = sorted(m for m in sys.modules if m.split('.')[0] in {TORCH_LIBRARIES!r}
                    or any(m == p or m.startswith(p + '.') for p in {torch_side!r}))
try:
    import streamlit  # noqa: F401
    have_app = True
except ImportError:
    have_app = False
for m in {entry!r}:
    if have_app or not m.startswith("met_core.app"):
        importlib.import_module(m)
entry = sorted(m for m in sys.modules if m.split('.')[0] in {TORCH_LIBRARIES!r}
               or any(m == p or m.startswith(p + '.') for p in {torch_side!r}))
print(json.dumps({{"numpy_side": numpy_side, "entry": entry}}))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STREAMLIT_GLOBAL_SHOW_WARNING_ON_DIRECT_EXECUTION": "false"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not loaded["numpy_side"], f"importing the NumPy side loaded {loaded['numpy_side'][:10]}"
    assert not loaded["entry"], f"importing met_core.cli and the app's modules loaded {loaded['entry'][:10]}"


def test_the_checker_reports_a_wrong_import():
    """Not vacuous: a NumPy-side module importing the torch side at import time, or torch in a function, is caught."""
    source = "from ..engine.devices import autocast\n\n\ndef f():\n    import torch\n"
    found = imports("met_core.analysis.whatif", PACKAGE / "analysis" / "whatif.py", source)
    assert {(i.target, i.lazy) for i in found} == {("met_core.engine.devices", False), ("torch", True)}
    part = part_of("met_core.analysis.whatif")
    assert part == "met_core.analysis" and RULES.side[part] == "numpy"
    assert part_of("met_core.engine.devices") not in RULES.eager[part] | RULES.lazy[part]
    assert "torch" in RULES.banned["numpy"]
