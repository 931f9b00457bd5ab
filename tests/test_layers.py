# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The package's floors: every module imports only its own floor and the floors below it; a task
package is entered only through its ``__init__``; no module re-exports what it imports.

Imports are read with ``ast`` from the source, so imports inside functions (lazy ones) count as
much as those at the top. ``diffews/__init__.py`` (the public re-exports) stands above all floors.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "diffews")

# bottom to top; a module may import its own floor and any floor listed before it
LAYERS = [
    "utils",        # images, atomic writes, overlays, the UsageError type: nothing else of diffews
    "modeling",     # meta-arch, KV fusion, SupportSet, UNet/VAE loading, readout, backends
    "checkpoint",   # weights in and out
    "data",         # datasets, episodes, loaders
    "evaluation",   # mIoU/FB-IoU, J&F, instance AP (reads dataset metadata)
    "sine_config",  # add_sine_config: every SINE key (nothing else of diffews)
    "config",       # add_diffews_config, build_config (registers DATASETS.CUSTOM datasets)
    "engine",       # trainer, hooks, solver
    "predictor",    # the one Predictor interface, one implementation per model, build_predictor
    "tasks",        # fss/ fsod/ vos/ autolabel/ packages (each entered by its __init__), demo
    "cli",          # the one command-line layer
    "web_demo",     # the page over the predictor
    "quickstart",   # tiny SD writer, VAE warm-up, the quick start
    "benchmark",    # side-by-side harness, GPU suite, real-size random models
]


def _modules():
    for folder, _, files in os.walk(PACKAGE):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                yield path, rel


def _imported(path, module_parts):
    """Absolute ``diffews.*`` names imported anywhere in the file (function bodies included)."""
    is_package = path.endswith("__init__.py")
    package = module_parts if is_package else module_parts[:-1]
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = base + (node.module.split(".") if node.module else [])
                names = [target + [a.name] for a in node.names] if not node.module else [target]
            else:
                names = [(node.module or "").split(".")]
            for parts in names:
                if parts[0] == "diffews":
                    yield parts, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "diffews":
                    yield parts, node.lineno


def _floor(parts):
    """The floor of ``diffews.<floor>...``; ``None`` for the package root."""
    return parts[1] if len(parts) > 1 else None


def _violations():
    upward, unknown, edges = [], [], set()
    for path, parts in _modules():
        own = _floor(parts)
        if own is None:
            continue  # diffews/__init__.py: the public API over every floor
        if own not in LAYERS:
            unknown.append(f"{os.path.relpath(path, ROOT)}: floor {own!r} is not in LAYERS")
            continue
        for target, line in _imported(path, parts):
            floor = _floor(target)
            where = f"{os.path.relpath(path, ROOT)}:{line} imports {'.'.join(target)}"
            if floor is None:
                upward.append(f"{where} (the package root, which imports every floor)")
            elif floor not in LAYERS:
                unknown.append(f"{where}: floor {floor!r} is not in LAYERS")
            elif LAYERS.index(floor) > LAYERS.index(own):
                upward.append(f"{where} ({own} is below {floor})")
            if floor and floor != own:
                edges.add((own, floor))
    return upward, unknown, edges


def _cycles(edges):
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    found = []

    def visit(node, stack):
        for nxt in sorted(graph.get(node, ())):
            if nxt in stack:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif len(stack) < len(LAYERS) + 1:
                visit(nxt, stack + [nxt])

    for start in sorted(graph):
        visit(start, [start])
    return found


def test_every_floor_is_listed():
    _, unknown, _ = _violations()
    assert not unknown, "\n".join(unknown)


def test_no_upward_import():
    upward, _, _ = _violations()
    assert not upward, "upward imports:\n" + "\n".join(upward)


def test_no_cycle_between_subpackages():
    _, _, edges = _violations()
    cycles = _cycles(edges)
    assert not cycles, "import cycles between floors: " + "; ".join(" -> ".join(c) for c in cycles)


def test_utils_imports_nothing_else_of_the_package():
    for path, parts in _modules():
        if _floor(parts) == "utils":
            others = [".".join(t) for t, _ in _imported(path, parts) if _floor(t) != "utils"]
            assert not others, f"{path} imports {others}"


@pytest.mark.parametrize("source, message", [
    ("def f():\n    from ..cli import run_cli\n", "utils is below cli"),
    ("from diffews.predictor import DiffewSPredictor\n", "utils is below predictor"),
])
def test_the_walk_sees_lazy_and_absolute_imports(tmp_path, monkeypatch, source, message):
    """The checker itself: a lazy relative import and an absolute one, planted in a copy of a
    base-floor module, are both reported."""
    fake = tmp_path / "diffews"
    (fake / "utils").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "utils" / "__init__.py").write_text("")
    (fake / "utils" / "planted.py").write_text(source)
    monkeypatch.setattr(__import__(__name__), "PACKAGE", str(fake))
    monkeypatch.setattr(__import__(__name__), "ROOT", str(tmp_path))
    upward, _, _ = _violations()
    assert any(message in u for u in upward), upward


TASKS = os.path.join(PACKAGE, "tasks")
SCRIPTS = [os.path.join(ROOT, d) for d in ("tools", "inference_fss", "inference_fsod",
                                           "inference_vos")]


def _sources(folders):
    for top in folders:
        for folder, _, files in os.walk(top):
            for name in sorted(files):
                if name.endswith(".py"):
                    yield os.path.join(folder, name)


def _parts_of(path):
    rel = os.path.relpath(path, ROOT)[:-3].split(os.sep)
    return rel[:-1] if rel[-1] == "__init__" else rel


def _back_doors(folders):
    """``path:line imports diffews.tasks.<task>.<part>`` for imports of a task package's parts
    from outside that package."""
    packages = {d for d in os.listdir(TASKS) if os.path.isdir(os.path.join(TASKS, d))
                and os.path.isfile(os.path.join(TASKS, d, "__init__.py"))}
    found = []
    for path in _sources(folders):
        parts = _parts_of(path)
        for target, line in _imported(path, parts):
            if len(target) > 3 and target[:2] == ["diffews", "tasks"] and target[2] in packages:
                inside = parts[:3] == target[:3]
                if not inside:
                    found.append(f"{os.path.relpath(path, ROOT)}:{line} imports "
                                 f"{'.'.join(target)}")
    return found


def test_task_packages_have_one_door():
    """Outside ``tasks/<task>/``, the package and the scripts import a task only through its
    ``__init__`` (``from diffews.tasks import fss``), never one of its parts."""
    doors = _back_doors([PACKAGE] + SCRIPTS)
    assert not doors, "imports of a task package's parts:\n" + "\n".join(doors)


def test_the_door_check_sees_a_back_door(tmp_path, monkeypatch):
    """The checker itself: a script importing ``diffews.tasks.fss.chunks`` is reported."""
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "planted.py").write_text("from diffews.tasks.fss.chunks import x\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", str(tmp_path))
    doors = _back_doors([str(tmp_path / "tools")])
    assert doors and "diffews.tasks.fss.chunks" in doors[0]


def test_no_reexport_outside_an_init():
    """A module outside ``__init__.py`` lists in ``__all__`` only names it defines (what it
    imports is used, not passed on: importers import from the defining module)."""
    found = []
    for path in _sources([PACKAGE] + SCRIPTS):
        if path.endswith("__init__.py"):
            continue
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        imported = {a.asname or a.name.split(".")[0] for node in tree.body
                    if isinstance(node, (ast.Import, ast.ImportFrom)) for a in node.names}
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__"
                                                    for t in node.targets):
                names = [e.value for e in node.value.elts if isinstance(e, ast.Constant)]
                found += [f"{os.path.relpath(path, ROOT)}: {n}" for n in names if n in imported]
        with open(path) as f:
            found += [f"{os.path.relpath(path, ROOT)}:{i}: {line.strip()}"
                      for i, line in enumerate(f, 1) if "re-export" in line and "noqa" in line]
    assert not found, "re-exported names:\n" + "\n".join(found)

