"""The house's walls, kept by a test: study/'s rooms import only downward, nothing imports in a circle, the
worker side never imports the driver, and functions stay short and narrow enough to read."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# study/'s rooms from the ground up; a room may import its own floor and those below it.
FLOORS = {"config": 0, "contract": 0, "faults": 0, "stats": 1, "phases": 2, "tracking": 3, "report": 4, "driver": 5, "run": 6,
          "after": 6}


def _modules(package: str) -> dict[str, ast.Module]:
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(), str(path))
    return found


def _imports(tree: ast.Module) -> set[str]:
    """Every module imported anywhere in the file, function-level imports included."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _floor(module: str) -> int:
    return FLOORS[module.split(".")[1]]


STUDY = _modules("study")


def test_study_rooms_import_only_downward():
    upward = [f"{module} -> {target}" for module, tree in STUDY.items() if module != "study"
              for target in _imports(tree) if target in STUDY and target != "study" and _floor(target) > _floor(module)]
    assert not upward, upward


def test_no_import_circle_in_study():
    graph = {module: {t for t in _imports(tree) if t in STUDY and t != module} for module, tree in STUDY.items()}

    def reaches(start: str, goal: str, seen: set) -> bool:
        return any(n == goal or (n not in seen and not seen.add(n) and reaches(n, goal, seen)) for n in graph[start])

    circles = [module for module in graph if reaches(module, module, set())]
    assert not circles, circles


@pytest.mark.parametrize("package", ["trainables", "search_spaces"])
def test_the_worker_side_never_imports_the_driver(package):
    offending = [f"{module} -> {target}" for module, tree in _modules(package).items()
                 for target in _imports(tree) if target == "study" or target.startswith("study.")]
    assert not offending, offending


def _functions(package: str):
    for module, tree in _modules(package).items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                yield module, node


@pytest.mark.parametrize("package", ["study", "trainables"])
def test_no_function_over_60_lines(package):
    long = [f"{module}.{node.name}: {node.end_lineno - node.lineno + 1} lines" for module, node in _functions(package)
            if not isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > 60]
    assert not long, long


def test_the_trial_callback_only_routes_events():
    [callback] = [node for module, node in _functions("study") if node.name == "MlflowTrialCallback"]
    assert callback.end_lineno - callback.lineno + 1 <= 80


def test_no_function_in_study_takes_more_than_six_parameters():
    wide = []
    for module, node in _functions("study"):
        if isinstance(node, ast.ClassDef):
            continue
        params = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs if a.arg not in ("self", "cls")]
        if len(params) > 6:
            wide.append(f"{module}.{node.name}: {len(params)}")
    assert not wide, wide
