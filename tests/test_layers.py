# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The package's floors: every module imports only its own floor and the floors below it.

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
    "config",       # add_diffews_config, build_config (registers DATASETS.CUSTOM datasets)
    "engine",       # trainer, hooks, solver
    "predictor",    # DiffewSPredictor, the user object over modeling
    "tasks",        # VOS, instance segmentation, mask -> instances, demo outputs
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
