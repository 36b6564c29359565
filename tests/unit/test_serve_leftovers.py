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


def _what_the_script_found(script: str, *, leads_its_group: bool) -> dict:
    """Run ``script`` in a Python of its own (leading a new session and group, or in pytest's) and
    return the JSON of its last line."""
    import json

    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, start_new_session=leads_its_group
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


LEADER = """
import json, subprocess, sys, time
from bidopt.serve.apps import _ray_processes_of_own_group
agent = subprocess.Popen(["bash", "-c", 'exec -a "ray::DashboardAgent" sleep 30'])
other = subprocess.Popen(["sleep", "30"])  # in the group too, but not Ray's: `bidopt serve | tee log`
deadline = time.time() + 10
while time.time() < deadline and agent.pid not in _ray_processes_of_own_group():
    time.sleep(0.1)
found = _ray_processes_of_own_group()
print(json.dumps({"agent": agent.pid, "other": other.pid, "found": sorted(found)}))
for p in (agent, other):
    p.kill()
    p.wait()
"""


def test_a_renamed_ray_agent_in_the_group_it_leads_is_found_and_nothing_else():
    """Ray's agents rename themselves (``ray::DashboardAgent``, no session folder in the command line)
    and are orphans once their raylet has gone; they are still in the stopping process's group."""
    seen = _what_the_script_found(LEADER, leads_its_group=True)
    assert seen["found"] == [seen["agent"]], seen


NOT_LEADER = """
import json, os, subprocess, sys, time
from bidopt.serve.apps import _ray_processes_of_own_group
assert os.getpgrp() != os.getpid() and os.getsid(0) != os.getpid()
agent = subprocess.Popen(["bash", "-c", 'exec -a "ray::DashboardAgent" sleep 30'])
time.sleep(1.0)
found = _ray_processes_of_own_group()
print(json.dumps({"agent": agent.pid, "found": sorted(found)}))
agent.kill()
agent.wait()
"""

OLD_AGENT = """
import json, subprocess, sys, time
agent = subprocess.Popen(["bash", "-c", 'exec -a "ray::raylet" sleep 30'])  # a Ray this process did not start
time.sleep(0.5)
from bidopt.serve.apps import _ray_processes_of_own_group, seconds_since_boot
since = seconds_since_boot()
time.sleep(0.2)
young = subprocess.Popen(["bash", "-c", 'exec -a "ray::DashboardAgent" sleep 30'])
deadline = time.time() + 10
while time.time() < deadline and young.pid not in _ray_processes_of_own_group(since):
    time.sleep(0.1)
print(json.dumps({"old": agent.pid, "young": young.pid, "found": sorted(_ray_processes_of_own_group(since))}))
for p in (agent, young):
    p.kill()
    p.wait()
"""


def test_a_process_that_leads_neither_its_group_nor_its_session_finds_nothing_there():
    """A process in a group it merely belongs to (the shell's pipeline, a CI runner) does not stop its
    members, a Ray agent of its own among them."""
    seen = _what_the_script_found(NOT_LEADER, leads_its_group=False)
    assert seen["found"] == [], seen


def test_a_ray_process_older_than_the_stops_start_of_ray_is_not_its_own():
    """``exec bidopt serve`` keeps the start time of the shell that may have started a Ray of its own
    first: only what is younger than the moment Ray was started counts."""
    seen = _what_the_script_found(OLD_AGENT, leads_its_group=True)
    assert seen["found"] == [seen["young"]], seen
