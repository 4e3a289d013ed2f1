"""The layout of ``rig/`` (DESIGN section 3): sub-packages whose imports point down only.

The import graph is read with ``ast`` (every ``import``, at module level or inside a
function), so a lazy import cannot hide an upward dependency.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RIG = ROOT / "rig"

# rank of each part of rig/: a module may import only from parts of lower rank (or its own part)
RANK = {
    "rig": 0,          # rig/*.py: errors, paths, config, backend (the interfaces)
    "rig.link": 1,
    "rig.sources": 1,
    "rig.presenter": 2,
    "rig.session": 2,
    "rig.store": 3,
    "rig.backends": 4,
    "rig.monitor": 4,
    "rig.compute": 5,
    "rig.truth": 5,
    "rig.results": 5,
    "rig.steps": 6,
    "rig.report": 7,
    "rig.driver": 8,
    "rig.cli": 9,
}
TOP_LEVEL = {"rig", "modelfit", "stimuli", "analysis", "sim"}
# what each top-level package may import from the others (DESIGN section 3)
ALLOWED = {
    "modelfit": set(),
    "stimuli": {"modelfit"},
    "analysis": set(),
    "sim": {"modelfit", "rig.backend"},
    "rig": {"modelfit", "stimuli", "analysis", "sim"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _part(module: str) -> str:
    """The rig part a module belongs to: 'rig' for rig/*.py, else 'rig.<sub>'."""
    bits = module.split(".")
    if len(bits) >= 3 or (len(bits) == 2 and (RIG / bits[1]).is_dir()):
        return ".".join(bits[:2])
    return "rig"


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            # `from rig import config` imports the module rig.config
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                    if (ROOT / node.module.replace(".", "/") / f"{a.name}.py").exists()
                    or (ROOT / node.module.replace(".", "/") / a.name).is_dir()]
    return out


def _first_party_files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_rig_top_level_holds_only_the_interfaces():
    top = sorted(p.name for p in RIG.glob("*.py"))
    assert len(top) <= 7, top
    assert not [p for p in top if p.startswith("cli_")]
    subs = {p.name for p in RIG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert {f"rig.{s}" for s in subs} <= set(RANK), f"rank the new sub-package(s) {subs - {k[4:] for k in RANK}}"


def test_rig_imports_point_down_only():
    upward = []
    for path in _first_party_files("rig"):
        me = _module_name(path)
        my_part = _part(me)
        for line, target in _imports(path):
            if target != "rig" and not target.startswith("rig."):
                continue
            if target == "rig":
                continue  # the package itself (__version__)
            part = _part(target)
            if part == my_part:
                continue
            if RANK[part] >= RANK[my_part]:
                upward.append(f"{path.relative_to(ROOT)}:{line} {me} ({my_part}) imports {target} ({part})")
    assert not upward, "imports that point up or sideways:\n" + "\n".join(upward)


def test_no_import_cycle_between_rig_modules():
    graph: dict[str, set[str]] = {}
    modules = {_module_name(p) for p in _first_party_files("rig")}
    for path in _first_party_files("rig"):
        graph[_module_name(path)] = {t for _, t in _imports(path) if t in modules and t != "rig"}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in graph.get(m, ()):
            if state.get(n) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_top_level_packages_import_only_what_design_allows(package):
    bad = []
    for path in _first_party_files(package):
        for line, target in _imports(path):
            head = target.split(".")[0]
            if head not in TOP_LEVEL or head == package:
                continue
            allowed = ALLOWED[package]
            if head in allowed or any(target == a or target.startswith(a + ".") for a in allowed):
                continue
            bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def test_argv_is_parsed_only_in_cli():
    offenders = []
    for pkg in TOP_LEVEL:
        for path in _first_party_files(pkg):
            if path.is_relative_to(RIG / "cli"):
                continue
            text = path.read_text()
            if "ArgumentParser(" in text or "sys.argv" in text:
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, offenders


def test_the_cli_parser_imports_neither_torch_nor_psychopy():
    """`itloop --help` stays fast: command modules import the heavy parts inside their commands."""
    import subprocess
    import sys

    code = ("import sys, rig.cli; rig.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'psychopy', 'pynwb', 'distributed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_the_live_rig_controller_imports_no_torch():
    """`itloop day run --backend rig` starts in a fraction of a second (a killed controller is
    back at once): its path (record, preflight, the rig backend, its spike sources) needs no
    torch; the simulated monkey and the model are imported where they are built."""
    import subprocess
    import sys

    code = ("import sys, rig.cli.day, rig.steps.record, rig.steps.preflight, rig.backends.rig, rig.sources.openephys, "
            "rig.sources.lsl, rig.monitor.server; print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


MAX_FUNCTION_LINES = 80


def test_no_function_in_the_library_packages_is_over_80_lines():
    """Every function (and method) of rig, modelfit, stimuli, analysis and sim fits in 80
    lines, decorators and docstring included (read with ``ast``)."""
    long = []
    for package in sorted(TOP_LEVEL):
        for path in _first_party_files(package):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                    n = node.end_lineno - first + 1
                    if n > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 80 lines (split them):\n" + "\n".join(long)


def test_no_library_function_takes_a_progress_flag():
    """Progress bars are one process-wide switch (:mod:`modelfit.progressbars`, set by the CLI's
    ``--no-progress``): no function of the library packages takes a ``progress`` flag (an argument
    of that name that is a bool or unannotated; the engine's per-row ``progress`` tensor is data)."""
    flagged = []
    for package in sorted(TOP_LEVEL):
        for path in _first_party_files(package):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    a = node.args
                    flags = [x for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg == "progress"
                             and (x.annotation is None or ast.unparse(x.annotation) == "bool")]
                    if flags:
                        flagged.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not flagged, "functions that take a progress flag:\n" + "\n".join(flagged)
