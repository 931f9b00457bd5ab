# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""One writer per output folder (issue 29 item 9, ``diffews.utils.lock``): a second run is refused
with one line naming the running one; a holder killed with kill -9 does not block the next run."""

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from diffews.utils.errors import UsageError
from diffews.utils.lock import LOCK_FILE, OutputBusy, OutputLock, holder_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLDER = textwrap.dedent("""\
    import sys, time
    from diffews.utils.lock import OutputLock
    lock = OutputLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    sys.exit(3)  # killed before: never reached
    """)


def test_second_lock_refused_until_released(tmp_path):
    out = str(tmp_path / "out")
    first = OutputLock(out, what=f"--output {out}", command="tools/autolabel.py --output out")
    with first:
        assert first.held and os.path.isfile(os.path.join(out, LOCK_FILE))
        info = holder_info(os.path.join(out, LOCK_FILE))
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        with pytest.raises(OutputBusy) as e:
            OutputLock(out, what=f"--output {out}").acquire()
        text = str(e.value)
        assert isinstance(e.value, UsageError) and "\n" not in text
        assert text.startswith(f"--output {out}: in use by pid {os.getpid()} on "
                               f"{socket.gethostname()}, started {info['started']}: "
                               "tools/autolabel.py --output out; wait for it to end")
    assert not first.held
    assert holder_info(os.path.join(out, LOCK_FILE)) is None  # emptied on release
    with OutputLock(out) as again:  # free again
        assert again.held
    first.acquire().release()  # the same object may lock again


def _holder(folder, seconds: float) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", HOLDER, folder, str(seconds)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_second_process_refused_and_kill_9_frees_it(tmp_path):
    out = str(tmp_path / "out")
    first = _holder(out, 300)  # another process holds the folder
    try:
        assert first.stdout.readline().strip() == "locked", first.stderr.read()
        with pytest.raises(OutputBusy) as e:
            OutputLock(out, what=f"--output {out}").acquire()
        text = str(e.value)
        assert "\n" not in text and text.startswith(
            f"--output {out}: in use by pid {first.pid} on {socket.gethostname()}, started "), text
        assert f"-c {out} 300; wait for it to end" in text  # the holder's command line
        first.send_signal(signal.SIGKILL)  # a crash: no release, no cleanup
        first.wait(timeout=60)
        assert holder_info(os.path.join(out, LOCK_FILE))["pid"] == first.pid  # stale details
        with OutputLock(out) as lock:  # the next run is not blocked
            assert lock.held and holder_info(lock.path)["pid"] == os.getpid()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
