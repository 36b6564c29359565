"""``bidopt serve``'s stop finds the Ray processes of its own sessions by name even when Ray never
said which folder it used (a signal during ray.init): Ray names a local session after the PID that
made it."""

import subprocess
import sys
import time

from bidopt.serve.apps import _processes_of_own_sessions


def test_processes_naming_a_session_of_this_pid_are_found_and_no_others():
    pid = 424242
    session = "/tmp/ray/session_2026-12-01_13-55-00_123456_"
    sleep = [sys.executable, "-c", "import time; time.sleep(30)"]
    ours = subprocess.Popen([*sleep, f"--session-dir={session}{pid}"])
    longer_pid = subprocess.Popen([*sleep, f"--log-dir={session}{pid}1/logs"])  # another PID's session
    try:
        deadline = time.time() + 10
        while time.time() < deadline and ours.pid not in _processes_of_own_sessions(pid):
            time.sleep(0.1)
        found = _processes_of_own_sessions(pid)
        assert ours.pid in found and longer_pid.pid not in found
    finally:
        for p in (ours, longer_pid):
            p.kill()
            p.wait()
