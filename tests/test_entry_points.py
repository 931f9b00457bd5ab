# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""Every entry point (``tools/*.py``, ``inference_*/*.py``) on the one command-line layer
(issue 17, item 1): the shared flags spelt the same with the same ``dest`` and default, the old
spellings accepted with a warning, comma-separated lists, flags reaching the config after the
trailing overrides, and a missing ``MODEL.DIFFEWS.PRETRAINED`` folder stopping each tool that
builds a model with one ``error:`` line and exit status 1 before the model is built.

The expectations below are written from the rules (README, "Entry points"; diffews/cli/args.py),
not read from the parsers. The entry points are scripts, loaded from their paths.
"""

import argparse
import ast
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = os.path.join(ROOT, "configs", "quick_schedules", "diffews_tiny_synthetic_cpu.yaml")
PATHS = {
    "train_net": "tools/train_net.py", "demo": "tools/demo.py", "benchmark": "tools/benchmark.py",
    "make_episodes": "tools/make_episodes.py", "check_datasets": "tools/check_datasets.py",
    "export_unet": "tools/export_unet.py", "quickstart": "tools/quickstart.py",
    "run_fss": "inference_fss/run_fss.py", "run_incontext": "inference_fss/run_incontext.py",
    "run_fsod": "inference_fsod/run_fsod.py", "run_vos": "inference_vos/run_vos.py",
    "eval_davis": "inference_vos/eval_davis.py",
}
# the shared flags: option -> (dest, default)
SHARED = {"--config-file": ("config_file", ""), "--dataset-root": ("dataset_root", None),
          "--output": ("output", None), "--device": ("device", None),
          "--batch-size": ("batch_size", None), "--num-gpus": ("num_gpus", 1),
          "--num-machines": ("num_machines", 1), "--machine-rank": ("machine_rank", 0),
          "--dist-url": ("dist_url", "auto"), "--debug": ("debug", False),
          "--opts": ("opts_flag", None)}
CFG_FLAGS = ("--config-file", "--opts", "--debug")
DIST = ("--num-gpus", "--num-machines", "--machine-rank", "--dist-url")
# which shared flags each tool has (a tool reading a config takes overrides; several processes:
# the launch flags; a model's batch: --batch-size)
HAS = {
    "train_net": CFG_FLAGS + ("--dataset-root", "--output", "--device") + DIST,
    "demo": CFG_FLAGS + ("--output", "--device", "--batch-size"),
    "benchmark": CFG_FLAGS + ("--device",),
    "make_episodes": ("--dataset-root", "--output", "--debug"),
    "check_datasets": ("--dataset-root", "--debug"),
    "export_unet": CFG_FLAGS + ("--output", "--device"),
    "quickstart": ("--opts", "--debug", "--output", "--device"),
    "run_fss": CFG_FLAGS + ("--dataset-root", "--output", "--device", "--batch-size") + DIST,
    "run_incontext": CFG_FLAGS + ("--dataset-root", "--output", "--device", "--batch-size") + DIST,
    "run_fsod": CFG_FLAGS + ("--dataset-root", "--output", "--device", "--batch-size") + DIST,
    "run_vos": CFG_FLAGS + ("--dataset-root", "--output", "--device", "--batch-size"),
    "eval_davis": ("--dataset-root", "--debug"),
}
# the config key --batch-size falls back to, named in its help (the demo has its own default)
BATCH_KEYS = {"run_fss": "TEST.FSS.BATCH_SIZE", "run_incontext": "TEST.FSS.BATCH_SIZE",
              "run_fsod": "TEST.FSOD.BATCH_SIZE", "run_vos": "TEST.VOS.BATCH_SIZE"}
# the default output folder each --help names: output/<tool>[/<what>]
OUTPUT_DEFAULTS = {"demo": "output/demo", "make_episodes": "output/episodes/",
                   "export_unet": "output/export_unet", "quickstart": "output/quickstart",
                   "run_fss": "output/fss", "run_incontext": "output/incontext",
                   "run_fsod": "output/fsod/", "run_vos": "output/vos/<dataset>",
                   "train_net": "the config's"}
# the smallest command line each parser accepts
MINIMAL = {
    "train_net": ["--config-file", CFG], "benchmark": [], "check_datasets": [],
    "demo": ["--config-file", CFG, "--support", "s.jpg", "s.png", "--query", "q.jpg"],
    "make_episodes": ["--benchmark", "fss"], "quickstart": [],
    "export_unet": ["--config-file", CFG, "--weights", "w.pth"],
    "run_fss": ["--config-file", CFG, "--benchmark", "fss"],
    "run_incontext": ["--config-file", CFG], "run_fsod": ["--config-file", CFG],
    "run_vos": ["--config-file", CFG], "eval_davis": ["--results", "res"],
}
_MODULES = {}


def load(name):
    """The entry point script as a module (cached: each is loaded once per session)."""
    if name not in _MODULES:
        spec = importlib.util.spec_from_file_location(f"entry_{name}",
                                                      os.path.join(ROOT, PATHS[name]))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULES[name] = module
    return _MODULES[name]


def _options(parser):
    return {s: a for a in parser._actions for s in a.option_strings if a.help != argparse.SUPPRESS}


@pytest.mark.parametrize("name", sorted(PATHS))
def test_shared_flags_same_dest_and_default(name):
    module = load(name)
    assert callable(module.cli)
    options = _options(module.get_parser())
    present = {flag for flag in SHARED if flag in options}
    assert present == set(HAS[name]), f"{name}: shared flags {sorted(present)}"
    for flag in present:
        dest, default = SHARED[flag]
        action = options[flag]
        if flag == "--batch-size" and name == "demo":
            default = 4  # no config key: the demo's own default, written in its help
        if flag == "--dist-url" and name == "train_net":  # detectron2's own default
            from detectron2.engine import default_argument_parser

            default = default_argument_parser().get_default("dist_url")
        assert action.dest == dest, f"{name} {flag}"
        if not (flag == "--config-file" and action.required):
            assert action.default == default, f"{name} {flag}: default {action.default!r}"
    if "--batch-size" in present and name in BATCH_KEYS:
        assert BATCH_KEYS[name] in options["--batch-size"].help
    if "--output" in present:
        assert OUTPUT_DEFAULTS[name] in options["--output"].help.replace("\n", " ")
    if "--opts" in present:  # trailing KEY VALUE pairs too, read into the same list
        parser = module.get_parser()
        from diffews.cli import config_overrides

        args = parser.parse_args(MINIMAL[name] + ["SOLVER.MAX_ITER", "3"])
        assert config_overrides(args) == ["SOLVER.MAX_ITER", "3"]
        args = parser.parse_args(MINIMAL[name] + ["--opts", "SOLVER.MAX_ITER", "3"])
        assert config_overrides(args) == ["SOLVER.MAX_ITER", "3"]


@pytest.mark.parametrize("name", sorted(n for n in PATHS if "--dataset-root" in HAS[n]))
def test_old_root_spelling_works_and_warns(name, capsys):
    args = load(name).get_parser().parse_args(MINIMAL[name] + ["--root", "/data/d2"])
    assert args.dataset_root == "/data/d2"
    assert "warning: --root is deprecated; use --dataset-root" in capsys.readouterr().err
    args = load(name).get_parser().parse_args(MINIMAL[name] + ["--dataset-root", "/data/d2"])
    assert args.dataset_root == "/data/d2" and capsys.readouterr().err == ""


def test_eval_davis_old_davis_root_names_the_davis_folder(capsys):
    eval_davis = load("eval_davis")
    args = eval_davis.get_parser().parse_args(["--results", "r", "--davis-root", "/d/DAVIS"])
    assert eval_davis.davis_folder(args) == "/d/DAVIS"
    assert "--davis-root DAVIS_FOLDER is deprecated" in capsys.readouterr().err
    args = eval_davis.get_parser().parse_args(["--results", "r", "--dataset-root", "/d2"])
    assert eval_davis.davis_folder(args) == os.path.join("/d2", "DAVIS17", "trainval")


@pytest.mark.parametrize("name, flag, values, kind", [
    ("run_vos", "--videos", ["bear", "boat"], str),
    ("run_incontext", "--shots", ["1", "5"], int),
    ("run_incontext", "--benchmarks", ["fss", "coco"], str),
    ("eval_davis", "--sequences", ["bike", "car"], str),
    ("benchmark", "--shots", ["1", "5"], int),
    ("benchmark", "--model", ["tiny", "mid"], str),
])
def test_lists_are_comma_separated_old_form_warns(name, flag, values, kind, capsys):
    from diffews.cli import parse_list

    parser = load(name).get_parser()
    dest = flag.lstrip("-").replace("-", "_")
    comma = getattr(parser.parse_args(MINIMAL[name] + [flag, ",".join(values)]), dest)
    assert parse_list(comma, kind, flag) == [kind(v) for v in values]
    assert capsys.readouterr().err == ""
    spaced = getattr(parser.parse_args(MINIMAL[name] + [flag, *values]), dest)
    assert parse_list(spaced, kind, flag) == [kind(v) for v in values]
    assert f"a space-separated list after {flag} is deprecated" in capsys.readouterr().err


@pytest.mark.parametrize("name, argv, expected", [
    ("run_fss", ["--shot", "3", "--batch-size", "2", "--device", "cpu"],
     {"TEST.FSS.SHOT": 3, "TEST.FSS.BATCH_SIZE": 2, "MODEL.DEVICE": "cpu",
      "OUTPUT_DIR": "output/fss"}),
    ("run_fsod", ["--shot", "5", "--seed", "3", "--batch-size", "2", "--output", "o"],
     {"TEST.FSOD.SHOT": 5, "TEST.FSOD.SEED": 3, "TEST.FSOD.BATCH_SIZE": 2, "OUTPUT_DIR": "o"}),
    ("run_vos", ["--mem-size", "4", "--no-reuse", "--batch-size", "3"],
     {"TEST.VOS.MEM_SIZE": 4, "TEST.VOS.REUSE_SUPPORTS": False, "TEST.VOS.BATCH_SIZE": 3}),
    ("train_net", ["--output", "out/t", "--device", "cpu"],
     {"OUTPUT_DIR": "out/t", "MODEL.DEVICE": "cpu"}),
])
def test_flags_win_over_trailing_overrides(name, argv, expected):
    """A flag and its config key cannot disagree: the flag is merged after the trailing pairs."""
    from diffews.cli import load_entry_config

    module = load(name)
    parse = getattr(module, "parse_args", None) or module.get_parser().parse_args
    trailing = []
    for key, value in expected.items():  # each key also given, differently, as a trailing pair
        trailing += [key, {bool: "True", int: "1", str: "other"}[type(value)]]
    cfg = load_entry_config(parse(MINIMAL[name] + argv + trailing), module.FLAGS)
    for key, value in expected.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        assert node == value, key


# a missing PRETRAINED folder: every tool that builds a model, with arguments that pass every
# check before it (output folders in tmp)
def _pretrained_cases(tmp):
    out = os.path.join(tmp, "out")
    vos = os.path.join(ROOT, "configs", "vos", "Base-DAVIS17.yaml")
    fsod = os.path.join(ROOT, "configs", "fsod", "Base-COCO-FSOD.yaml")
    return {
        "train_net": ["--config-file", CFG, "--output", out],
        "demo": ["--config-file", CFG, "--support", "s.jpg", "s.png", "--query", "q.jpg",
                 "--output", out],
        "run_fss": ["--config-file", CFG, "--benchmark", "synthetic", "--output", out],
        "run_incontext": ["--config-file", CFG, "--benchmarks", "synthetic", "--output", out],
        "run_fsod": ["--config-file", fsod, "--output", out],
        "run_vos": ["--config-file", vos, "--dataset", "davis17_val", "--output", out],
        "export_unet": ["--config-file", CFG, "--weights", "w.pth", "--output", out],
        "benchmark": ["--config-file", CFG],
    }


@pytest.mark.parametrize("name", sorted(_pretrained_cases("x")))
def test_missing_pretrained_one_line_before_the_model(name, tmp_path, capsys, monkeypatch):
    from diffews.modeling import DiffewS

    module = load(name)
    built = []
    monkeypatch.setattr(DiffewS, "__init__", lambda self, *a, **k: built.append(1))
    if hasattr(module, "setup_logger"):  # its handlers would outlive this test's capture
        monkeypatch.setattr(module, "setup_logger", lambda *a, **k: None)
    argv = _pretrained_cases(str(tmp_path))[name] + [
        "MODEL.DIFFEWS.PRETRAINED", "/nonexistent/sd21", "MODEL.WEIGHTS", "",
        "MODEL.DIFFEWS.ALLOW_UNTRAINED", "True"]
    status = module.cli(argv)
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert status == 1 and built == [], err
    assert len(err) == 1 and err[0].startswith(
        "error: /nonexistent/sd21: MODEL.DIFFEWS.PRETRAINED folder not found"), err


def test_diffews_imported_before_detectron2():
    """diffews/__init__ installs the filter of fvcore's torch.jit.script FutureWarning: each
    entry point imports diffews before any third-party module (detectron2 loads fvcore)."""
    stdlib = set(sys.stdlib_module_names)
    for name, path in PATHS.items():
        with open(os.path.join(ROOT, path)) as f:
            tree = ast.parse(f.read())
        first = None
        for node in tree.body:  # module level, in order
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module]
            else:
                continue
            top = [m.split(".")[0] for m in mods if m.split(".")[0] not in stdlib]
            if top:
                first = top[0]
                break
        assert first == "diffews", f"{path}: first non-stdlib import is {first}"
        assert "filterwarnings" not in ast.dump(tree), f"{path}: the filter lives in diffews"


@pytest.mark.slow
def test_no_future_warning_on_stderr():
    """One real run (the slowest imports: detectron2's evaluation, fvcore): nothing on stderr."""
    proc = subprocess.run([sys.executable, PATHS["run_fss"], "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert "--dataset-root" in proc.stdout and "--batch-size" in proc.stdout


def test_every_entry_point_exposes_get_parser_and_cli():
    """Every script in tools/ and inference_*/ (new ones included) is thin in the same way:
    ``get_parser()``, ``cli(argv=None)`` and ``sys.exit(cli())`` under ``__main__``."""
    import glob

    scripts = sorted(glob.glob(os.path.join(ROOT, "tools", "*.py"))
                     + glob.glob(os.path.join(ROOT, "inference_*", "*.py")))
    assert {os.path.relpath(p, ROOT) for p in scripts} >= set(PATHS.values())
    for path in scripts:
        with open(path) as f:
            tree = ast.parse(f.read())
        functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert {"get_parser", "cli"} <= functions, path
        assert ast.unparse(tree.body[-1]) == "if __name__ == '__main__':\n    sys.exit(cli())", path
