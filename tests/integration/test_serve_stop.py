"""`bidopt serve` stops cleanly on SIGINT and SIGTERM: Serve and its Ray shut down, every process it
started is gone, exit code 0, and it says so. The unit tests drive ``ServeLifetime`` with real signals
and Ray and Serve replaced; the slow ones start a real `bidopt serve` (Ray ~30 s, Serve drains ~30 s)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

BIDOPT = Path(sys.executable).parent / "bidopt"
STOPPED = "bidopt serve: stopped (Serve and Ray shut down)"


@pytest.fixture
def lifetime(monkeypatch):
    """A ServeLifetime whose Ray and Serve are stand-ins that record what was done to them; the
    signal handlers it installs are put back afterwards."""
    import ray
    from ray import serve

    from bidopt.serve import apps

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    calls: list[str] = []
    said: list[str] = []

    def start_ray():
        calls.append("start_ray")
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))  # what ray.init does

    monkeypatch.setattr(apps, "start_ray", start_ray)
    monkeypatch.setattr(apps, "run_apps", lambda **kw: calls.append("run_apps") or "http://127.0.0.1:1/")
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.append("ray.shutdown"))
    monkeypatch.setattr(serve, "shutdown", lambda: calls.append("serve.shutdown"))
    monkeypatch.setattr(apps.ServeLifetime, "started_processes", staticmethod(dict))
    # nor any process found by the stop's other scans: this pytest may lead its group, with Ray
    # processes of other tests in it
    for scan in ("_processes_of_session", "_processes_of_own_sessions"):
        monkeypatch.setattr(apps, scan, lambda *args: {})
    group_scans: list = []  # the ``since`` of each scan of the group: the stop's own start of Ray
    monkeypatch.setattr(apps, "_ray_processes_of_own_group", lambda since=None: group_scans.append(since) or {})
    life = apps.ServeLifetime(said.append)
    life.calls, life.said, life.group_scans = calls, said, group_scans
    yield life
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def _signal_self(signum):
    def send(*_args, **_kwargs):
        os.kill(os.getpid(), signum)  # the handler runs in this (main) thread before os.kill returns

    return send


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_while_serving_shuts_serve_then_ray_down_and_says_so(lifetime, signum):
    result = lifetime.run(host="127.0.0.1", port=1, on_ready=_signal_self(signum))
    assert result == STOPPED
    assert lifetime.calls == ["start_ray", "run_apps", "serve.shutdown", "ray.shutdown"]
    assert lifetime.said == [f"bidopt serve: {signal.Signals(signum).name} received, stopping"]
    # Ray's processes in its group count from its start of Ray, not from its own start
    assert lifetime.group_scans and set(lifetime.group_scans) == {lifetime.ray_started_at} != {None}


def test_a_second_signal_while_stopping_does_not_cut_the_stop_short(lifetime, monkeypatch):
    from ray import serve

    def slow_serve_shutdown():
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        lifetime.calls.append("serve.shutdown")

    monkeypatch.setattr(serve, "shutdown", slow_serve_shutdown)
    assert lifetime.run(host="127.0.0.1", port=1, on_ready=_signal_self(signal.SIGINT)) == STOPPED
    assert lifetime.calls == ["start_ray", "run_apps", "serve.shutdown", "ray.shutdown"]
    assert lifetime.said[1:] == [
        "bidopt serve: SIGTERM while stopping; still shutting down",
        "bidopt serve: SIGINT while stopping; still shutting down",
    ]
    os.kill(os.getpid(), signal.SIGTERM)  # after the stop, too: reported, not fatal
    assert lifetime.said[-1] == "bidopt serve: SIGTERM while stopping; still shutting down"


@pytest.mark.parametrize("phase", ["ray starting", "apps deploying"])
def test_a_signal_before_serve_is_up_stops_what_was_started(lifetime, monkeypatch, phase):
    from bidopt.serve import apps

    ready: list[str] = []
    if phase == "ray starting":

        def ray_init_got_sigterm():
            # ray.init replaces the SIGTERM handler with one that calls sys.exit(SIGTERM)
            lifetime.calls.append("start_ray")
            raise SystemExit(signal.SIGTERM)

        monkeypatch.setattr(apps, "start_ray", ray_init_got_sigterm)
    else:
        monkeypatch.setattr(apps, "run_apps", _signal_self(signal.SIGINT))
    result = lifetime.run(host="127.0.0.1", port=1, on_ready=ready.append)
    assert (result, ready, lifetime.calls) == (STOPPED, [], ["start_ray", "serve.shutdown", "ray.shutdown"])


def test_an_error_while_starting_stops_what_was_started_and_is_raised(lifetime, monkeypatch):
    from bidopt.jobs.ray_runtime import UnplaceableError
    from bidopt.serve import apps

    def unplaceable(**_kwargs):
        raise UnplaceableError("no node of this Ray cluster can host a bidder replica")

    monkeypatch.setattr(apps, "run_apps", unplaceable)
    with pytest.raises(UnplaceableError):
        lifetime.run(host="127.0.0.1", port=1, on_ready=lambda url: None)
    assert lifetime.calls == ["start_ray", "serve.shutdown", "ray.shutdown"]
    assert lifetime.said == [STOPPED]


def test_on_a_cluster_it_did_not_start_it_only_detaches(lifetime, monkeypatch):
    """BIDOPT_RAY_ADDRESS: the cluster, its Serve and the apps just deployed keep running."""
    from bidopt.settings import reset_settings_cache

    monkeypatch.setenv("BIDOPT_RAY_ADDRESS", "ray://head.example:10001")
    reset_settings_cache()
    result = lifetime.run(host="127.0.0.1", port=1, on_ready=_signal_self(signal.SIGTERM))
    assert lifetime.calls == ["start_ray", "run_apps", "ray.shutdown"]  # ray.shutdown only disconnects
    assert result.startswith("bidopt serve: detached from the Ray cluster at ray://head.example:10001")
    assert "keep running" in result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _names(processes) -> set[str]:
    """The names of those of ``processes`` still running: a short-lived helper recorded a moment ago
    may have exited since (psutil then raises NoSuchProcess, which failed this test once in CI)."""
    import psutil

    names = set()
    for p in processes:
        try:
            names.add(p.name())
        except psutil.NoSuchProcess:
            pass
    return names


def _started_by(pid: int, ray_tmp: Path) -> dict:
    """Every live process that `bidopt serve` (``pid``, leader of its own session) started: its
    descendants, anything left in its session, and anything that names its Ray folder (a worker
    whose parent has gone is nobody's descendant any more)."""
    import psutil
    import ray  # noqa: F401 - puts Ray's copy of psutil on sys.path

    found = {}
    try:
        found.update({p.pid: p for p in psutil.Process(pid).children(recursive=True)})
    except psutil.NoSuchProcess:
        pass
    for p in psutil.process_iter(["cmdline"]):
        if p.pid == pid:
            continue
        try:
            if os.getsid(p.pid) == pid or str(ray_tmp) in " ".join(p.info["cmdline"] or []):
                found[p.pid] = p
        except (ProcessLookupError, PermissionError):
            pass
    return {pid: p for pid, p in found.items() if _running(p)}


def _running(process) -> bool:
    """A zombie runs nothing: whoever it belonged to has exited, and init reaps it."""
    import psutil
    import ray  # noqa: F401

    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "how", ["SIGTERM", "SIGINT to the group, then SIGTERM while stopping", "SIGTERM before Serve is up"]
)
def test_bidopt_serve_stops_cleanly_on_a_signal(platform_db, how):
    import psutil
    import ray  # noqa: F401 - puts Ray's copy of psutil on sys.path

    port = _free_port()
    # its own Ray folder (short: Ray's socket paths must fit in 107 characters)
    ray_tmp = Path(tempfile.mkdtemp(prefix="rs", dir="/tmp"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": str(ray_tmp), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [str(BIDOPT), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True)
    reader.start()
    recorded: dict = {}
    try:
        deadline = time.time() + 240
        if how == "SIGTERM before Serve is up":
            # Ray is up (its raylet runs) but the apps are still deploying, or just done
            while not any("raylet" in name for name in _names(_started_by(proc.pid, ray_tmp).values())):
                assert time.time() < deadline and proc.poll() is None, "".join(output)
                time.sleep(0.2)
        else:
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.time() < deadline and proc.poll() is None, "".join(output)
                time.sleep(0.5)
        recorded = _started_by(proc.pid, ray_tmp)
        names = _names(recorded.values())
        assert {"raylet", "gcs_server"} <= names, names

        if how.startswith("SIGINT"):
            os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
            while not any("SIGINT received, stopping" in line for line in output):
                assert proc.poll() is None, "".join(output)
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGTERM)  # a second signal must not cut the stop short
        else:
            os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=180) == 0, "".join(output)
        reader.join(timeout=10)
        text = "".join(output)
        assert STOPPED in text, text
        received = "SIGINT" if how.startswith("SIGINT") else "SIGTERM"
        assert f"{received} received, stopping" in text, text
        behind = [p for p in recorded.values() if _running(p)] + list(_started_by(proc.pid, ray_tmp).values())
        left = [f"{p.pid} {' '.join(_names([p])) or '(exited)'}" for p in behind]
        assert not left, f"processes left behind: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        leftovers = list(recorded.values()) + list(_started_by(proc.pid, ray_tmp).values())
        for p in leftovers:  # by PID, this test's processes only; never `ray stop`
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(leftovers, timeout=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)
