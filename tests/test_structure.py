"""The product's structure, as the developers' guide asks for it: layers without cycles, files a
reader can hold, imports where a reader looks for them.

Read from the source with ``ast``: what counts is every ``import`` statement, those inside
functions included (a cycle hidden in a function is still a cycle).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("study", "trainables", "search_spaces")
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path) -> list[tuple[ast.stmt, list[str], bool]]:
    """(statement, project modules it imports, whether it sits inside a function) of ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    in_function = {id(sub) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for sub in ast.walk(node) if sub is not node}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        targets = [n for n in names if n in MODULES]
        if targets:
            out.append((node, targets, id(node) in in_function))
    return out


def _graph() -> dict[str, set[str]]:
    return {name: {t for _, targets, _ in _imports(path) for t in targets if t != name} for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_finder_sees_a_cycle_and_a_function_level_import():
    """Negative control: a cycle through an import inside a function is found."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    assert any(inside for _, _, inside in _imports(MODULES["study.run"]))  # run imports execute lazily


def test_no_import_cycle_between_product_modules():
    assert _cycles(_graph()) == []


def test_trainables_never_imports_the_study_layer():
    """The per-trial code runs on Ray workers without the study's driver code."""
    wrong = {name: sorted(t for t in targets if t.startswith("study")) for name, targets in _graph().items()
             if name.startswith("trainables") and any(t.startswith("study") for t in targets)}
    assert wrong == {}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_product_file_is_longer_than_500_lines(name):
    assert len(MODULES[name].read_text(encoding="utf-8").splitlines()) <= MAX_LINES


def test_a_project_import_inside_a_function_says_why():
    """Imports sit at the top; one inside a function must save start-up time and say so in a comment
    on its line or on the lines of its group just above it."""
    silent = []
    for name, path in MODULES.items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node, _, inside in _imports(path):
            if not inside:
                continue
            row = node.lineno - 1
            while row >= 0 and "#" not in lines[row] and lines[row].strip().startswith(("from ", "import ", "#")):
                row -= 1
            if row < 0 or "#" not in lines[row]:
                silent.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert silent == []


def test_the_cli_starts_without_the_heavy_libraries():
    """A refused input answers at once: importing the CLI loads neither torch, Ray Tune, MLflow nor
    matplotlib (their costs: docs/performance.md, "Start-up"). Run in a fresh interpreter."""
    probe = "import sys, study.run; print(sorted(m for m in ('torch', 'ray.tune', 'mlflow', 'matplotlib') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.strip() == "[]"


# What a test module writes when it starts Ray: an in-process cluster, a trial on Ray Train, a study
# subprocess (which starts its own local cluster), the shared smoke study, or a Ray head.
STARTS_RAY = ("ray.init(", "fit_trial(", "start_study(", "standin_command(", "smoke_study", '"ray", "start"')


def test_every_module_that_starts_ray_runs_in_the_ray_worker():
    """Two Ray instances on one machine break each other: every test module that starts Ray must be in
    conftest's RAY_MODULES, which pytest-xdist runs one after another in one worker."""
    from tests.conftest import RAY_MODULES

    starting = {p.stem for p in (ROOT / "tests").glob("test_*.py")
                if any(signal in p.read_text(encoding="utf-8") for signal in STARTS_RAY)}
    starting.discard(Path(__file__).stem)  # this file only names them
    assert starting == set(RAY_MODULES)
