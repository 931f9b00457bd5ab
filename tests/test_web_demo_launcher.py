# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""tools/web_demo.py's launcher without serving: the quick start's model or a config, the flags
that reach the session and the page (limits, logins, Gradio's cache), the warnings about logins
given on the command line (issue 29 item 4), --help, and wrong flags stopping before any model is
built. (Split from tests/test_web_demo.py, which serves the page.)"""

import logging
import os
import shutil
import sys

import pytest

from conftest import SIZE
from diffews import DiffewSCheckpointer

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import web_demo as web_demo_tool  # noqa: E402

from diffews.web_demo import WebDemoSession  # noqa: E402


def test_launcher_quickstart_and_config(tiny_sd, tiny_model, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(web_demo_tool, "setup_logger", lambda **kwargs: None)
    launched, demo_sessions = {}, []

    def fake_launch(demo, host, port, share, block, allowed_paths, auth, max_file_bytes):
        launched.update(demo=demo, host=host, port=port, share=share, auth=auth,
                        folders=demo_sessions[-1].folders.roots,
                        batch_size=demo_sessions[-1].batch_size, max_file_bytes=max_file_bytes)
        return "http://fake"

    def recorded_session(*args, **kwargs):
        demo_sessions.append(WebDemoSession(*args, **kwargs))
        return demo_sessions[-1]

    monkeypatch.setattr(web_demo_tool, "launch_demo", fake_launch)
    monkeypatch.setattr(web_demo_tool, "WebDemoSession", recorded_session)
    monkeypatch.setattr("gradio.Blocks.block_thread", lambda self: None)
    monkeypatch.chdir(tmp_path)

    # the quick start was not run: one line naming the command, exit status 1
    missing = tmp_path / "no_quickstart"
    assert web_demo_tool.cli(["--quickstart-dir", str(missing)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"python tools/quickstart.py --output {missing}" in err

    # a quick start folder (tiny SD + trainer checkpoint): the defaults; on loopback, query
    # folders under the current folder only
    qs = tmp_path / "quickstart"
    shutil.copytree(tiny_sd, qs / "tiny_sd")
    (qs / "tiny_sd" / "quickstart.json").write_text("{}")
    DiffewSCheckpointer(tiny_model, save_dir=str(qs / "train")).save("model_final")
    assert web_demo_tool.cli(["--quickstart-dir", str(qs), "INPUT.IMAGE_SIZE", str(SIZE)]) == 0
    assert (launched["host"], launched["port"], launched["share"], launched["auth"]) == \
        ("127.0.0.1", 7860, False, None)
    assert launched["folders"] == [os.path.realpath(tmp_path)] and launched["batch_size"] == 4
    assert launched["max_file_bytes"] == 50 * 2**20
    assert launched["demo"].delete_cache == (60, 3600)  # Gradio's cache: an hour (item 2)

    # --config-file with trailing overrides, --device, --share (no folders), logins; --auth on
    # the command line is visible in ps: a warning (issue 29 item 4)
    config = os.path.join(ROOT, "configs", "Base-DiffewS.yaml")
    logins = tmp_path / "logins.txt"
    logins.write_text("# the lab\nbob:s3:cret\n")
    os.chmod(logins, 0o600)
    warned = logging.Handler()
    warned.emit = lambda record: warnings_seen.append(record.getMessage())
    warnings_seen = []
    logging.getLogger("diffews.web_demo").addHandler(warned)
    try:
        assert web_demo_tool.cli(
            ["--config-file", config, "--device", "cpu", "--port", "7999", "--share",
             "--auth", "alice:pw", "--auth-file", str(logins), "--batch-size", "2",
             "--max-file-mb", "3", "--gradio-cache-minutes", "0.5",
             "MODEL.DIFFEWS.PRETRAINED", tiny_sd, "INPUT.IMAGE_SIZE",
             str(SIZE), "MODEL.DIFFEWS.ALLOW_UNTRAINED", "True"]) == 0
    finally:
        logging.getLogger("diffews.web_demo").removeHandler(warned)
    assert [w for w in warnings_seen if "--auth" in w] == [
        "web demo: --auth puts the password on the command line, where every user of this machine "
        "sees it (ps) and the shell history keeps it; use --auth-file FILE (one USER:PASS a line, "
        "chmod 600) instead"]
    assert (launched["port"], launched["share"], launched["folders"]) == (7999, True, [])
    assert launched["auth"] == [("alice", "pw"), ("bob", "s3:cret")]
    assert (launched["batch_size"], launched["max_file_bytes"]) == (2, 3 * 2**20)
    assert launched["demo"].delete_cache == (30, 30)

    # --help steers logins to a file
    with pytest.raises(SystemExit):
        web_demo_tool.cli(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "in ps: prefer --auth-file" in help_text and "--max-side N" in help_text

    # flags that are wrong stop before any model is built: one line, exit status 2
    capsys.readouterr()
    for argv, message in (
            (["--auth", "alice"], "--auth: expected USER:PASS"),
            (["--allowed-root", str(tmp_path / "nowhere")], "--allowed-root"),
            (["--cache-mb", "0"], "--cache-mb must be > 0"),
            (["--max-pixels", "0"], "--max-pixels must be >= 1"),
            (["--max-side", "0"], "--max-side must be >= 1"),
            (["--gradio-cache-minutes", "0"], "--gradio-cache-minutes must be > 0")):
        n = len(demo_sessions)
        assert web_demo_tool.cli(["--config-file", config, *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
        assert len(demo_sessions) == n
