"""The Ray Serve applications and how ``bidopt serve`` starts them.

* ``management``: the FastAPI app of ``bidopt.serve.api`` (API + web UI) at ``/``.
* ``bidder``: ``POST /openrtb2/{entity_code}`` and the notice routes
  ``/openrtb2/_notice/{kind}/{entity_code}``, a plain ``async __call__`` over ``BidderCore`` (no
  FastAPI on the hot path), autoscaled by ``bidopt.serve.autoscaling``'s policy on the CPU and
  event-loop lag its replicas report (Serve's default policy reads zero ongoing requests here).
* ``control``: the control loop (guardrails and optimizer schedules, ``bidopt.serve.control``),
  one replica, no HTTP route.

``bidopt serve`` turns on Serve's HAProxy ingress and throughput-optimised mode
(``RAY_SERVE_ENABLE_HA_PROXY=1``, ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``) unless the
environment says otherwise: measured on this 2-core machine, the default Python
proxy tops out in the hundreds of requests per second (``benchmarks/bidder.py``).

Replicas are light (``num_cpus`` 0.25) so that they fit next to the optimizer on a
small machine, and accept many concurrent requests (``max_ongoing_requests``; Serve's
default of 5 throttles a UI that loads several resources at once). On a cluster that
declares bidder nodes (cluster.yaml), bidder replicas also request the ``bidder`` node
resource, so that they never share a node with optimizer tasks.

``ServeLifetime`` is ``bidopt serve`` itself: it starts Ray and the apps, serves until
SIGINT or SIGTERM, and stops cleanly (see its docstring for who stops what).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from ray import serve
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.responses import Response  # noqa: F401 - the type Serve gets back

from bidopt.bidder.app import BidderCore, http_handler
from bidopt.bidder.load import LoadMeter
from bidopt.db import access
from bidopt.errors import NotFound
from bidopt.jobs.ray_runtime import BIDDER_REPLICA_CPUS
from bidopt.serve.api import create_app
from bidopt.serve.autoscaling import DEFAULT_MAX_LOOP_LAG_MS, DEFAULT_TARGET_CPU, POLICY_IMPORT_PATH
from bidopt.serve.control import ControlLoopDeployment

LOCAL_OPERATOR = "local"

management_app = create_app()


@serve.deployment(name="management", num_replicas=1, max_ongoing_requests=100, ray_actor_options={"num_cpus": 0.25})
@serve.ingress(management_app)
class ManagementAPI:
    """Routes come from the FastAPI app; settings are read from BIDOPT_* in the replica."""


# Every key must be a field of ray.serve.config.AutoscalingConfig (a test checks: a misspelt
# field would be ignored without a word). min/max_replicas, the delays and the policy's targets here
# are the settings' defaults (BIDOPT_BIDDER_MIN_REPLICAS, ..._TARGET_CPU, ...), which `bidopt serve`
# applies (bidder_autoscaling). serve_config.yaml sizes min/max for a cluster's bidder nodes
# (cluster.yaml: max 16); every other key there must equal this one's (tests/integration/test_cluster.py).
# The policy is bidopt.serve.autoscaling's: Serve's default one (ongoing requests) sees zero here.
BIDDER_AUTOSCALING = {
    "min_replicas": 2,
    "max_replicas": 4,
    # the replicas record their signals every look_back_period_s / 5 and push them to the controller
    # every metrics_interval_s (deprecated, with a warning, but in Ray 2.60 still the only setting that
    # does it: the environment variables meant to replace it are not read); its default of 10 s
    # delayed every decision by up to 10 s. The window must exceed it.
    "metrics_interval_s": 2.0,
    "look_back_period_s": 10.0,
    "upscale_delay_s": 10.0,
    "downscale_delay_s": 120.0,
    "policy": {
        "policy_function": POLICY_IMPORT_PATH,
        "policy_kwargs": {"target_cpu": DEFAULT_TARGET_CPU, "max_loop_lag_ms": DEFAULT_MAX_LOOP_LAG_MS},
    },
}


# ray_actor_options here are the default of `serve deploy` without options; `bidopt serve` replaces them
# with bidder_replica_options() (the bidder resource where the cluster declares bidder nodes), and
# serve_config.yaml requests that resource explicitly.
@serve.deployment(
    name="bidder",
    max_ongoing_requests=100,
    autoscaling_config=BIDDER_AUTOSCALING,
    ray_actor_options={"num_cpus": BIDDER_REPLICA_CPUS},
    # a log line per request costs more than the decision itself; decisions and notices are events
    logging_config={"enable_access_log": False, "log_level": "WARNING"},
)
class Bidder:
    """Each replica keeps its own near cache and refresher thread (``BidderCore``).

    Serve marks a replica ready when ``__init__`` returns and sends it traffic from then on, so
    ``__init__`` loads the active splits first (``BidderCore`` raises if the database stays
    unreachable for ``BIDOPT_BIDDER_READY_TIMEOUT_SECONDS``; Serve then retries the replica).
    ``check_health`` fails a replica whose refresh thread died or hangs; ``__del__`` (a clean stop) removes
    the replica's status row and writes the events it still buffers.

    ``record_autoscaling_stats`` reports the replica's load (``bidopt.bidder.load``) to the autoscaling
    policy (``bidopt.serve.autoscaling``); Serve calls it every ``look_back_period_s / 5``."""

    def __init__(self) -> None:
        self.core = BidderCore()
        self.load = LoadMeter()  # made after the first load: loading the tables is not traffic

    async def __call__(self, request: Request) -> Response:
        self.load.note_request()
        return await http_handler(self.core, request)

    async def record_autoscaling_stats(self) -> dict[str, float]:
        self.load.ensure_watching()  # on the loop that runs the requests: Serve calls this there
        return self.load.sample()

    def check_health(self) -> None:
        self.core.check_health()

    def __del__(self) -> None:
        core = getattr(self, "core", None)  # absent when __init__ raised
        if core is not None:
            core.close()


# Serve's HAProxy ingress and throughput-optimised mode; HAProxy's per-request metrics log (parsed
# by a Python actor: a fifth of a core at 5k req/s here) off, one HAProxy thread on small machines.
# Decisions and notices are events (bidopt.events); HAProxy's stats page still counts requests.
SERVE_MODE_ENV = {
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_HAPROXY_METRICS_ENABLED": "0",
    "RAY_SERVE_HAPROXY_NBTHREAD": "1",
}


def bidder_autoscaling() -> dict:
    """``BIDDER_AUTOSCALING`` with the replica bounds, delays and policy targets of the settings."""
    from bidopt.settings import get_settings

    s = get_settings()
    low = s.bidder_min_replicas
    return {
        **BIDDER_AUTOSCALING,
        "min_replicas": low,
        "max_replicas": max(low, s.bidder_max_replicas),
        "upscale_delay_s": s.bidder_upscale_delay_seconds,
        "downscale_delay_s": s.bidder_downscale_delay_seconds,
        "policy": {
            "policy_function": POLICY_IMPORT_PATH,
            "policy_kwargs": {"target_cpu": s.bidder_target_cpu, "max_loop_lag_ms": s.bidder_max_loop_lag_ms},
        },
    }


# Import paths for `serve deploy serve_config.yaml`.
management = ManagementAPI.bind()
bidder = Bidder.bind()
control = ControlLoopDeployment.bind()


def ensure_local_operator_token(session: Session, *, force_new: bool = False) -> str | None:
    """The embedded default's first token: with no active token in the database (or with
    ``force_new``), create the operator ``local`` if needed and return a new token for it."""
    if not force_new and access.count_active_tokens(session) > 0:
        return None
    try:
        access.get_user(session, LOCAL_OPERATOR)
    except NotFound:  # first start
        access.create_user(session, LOCAL_OPERATOR, "operator")
    return access.create_api_token(session, LOCAL_OPERATOR, "bidopt serve")[1]


def start_ray() -> None:
    """Ray for the apps (BIDOPT_RAY_ADDRESS or a new local one), with Serve's mode in its environment."""
    from bidopt.jobs.ray_runtime import ensure_ray

    for key, value in SERVE_MODE_ENV.items():  # read by the Serve controller when Ray starts
        os.environ.setdefault(key, value)
    ensure_ray()


def run_apps(*, host: str = "127.0.0.1", port: int = 8000) -> str:
    """Deploy the apps on Ray (BIDOPT_RAY_ADDRESS or local) and return the base URL.

    Bidder replicas request the ``bidder`` resource where the cluster declares bidder nodes
    (``bidder_replica_options``); when no node could host one, ``UnplaceableError`` is raised before
    anything is deployed. The management app may go anywhere."""
    from bidopt.jobs.ray_runtime import bidder_replica_options

    start_ray()
    replica_options = bidder_replica_options()
    serve.start(http_options={"host": host, "port": port})
    serve.run(ManagementAPI.bind(), name="management", route_prefix="/")
    serve.run(
        Bidder.options(autoscaling_config=bidder_autoscaling(), ray_actor_options=replica_options).bind(),
        name="bidder",
        route_prefix="/openrtb2",
    )
    serve.run(ControlLoopDeployment.bind(), name="control", route_prefix=None)  # no HTTP route
    return f"http://{host}:{port}/"


STOPPED_LOCAL = "bidopt serve: stopped (Serve and Ray shut down)"


class StopRequested(BaseException):
    """SIGINT or SIGTERM asked ``bidopt serve`` to stop. A BaseException, like KeyboardInterrupt, so
    that no ``except Exception`` in Ray or Serve code swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signal_name = signal.Signals(signum).name


class ServeLifetime:
    """``bidopt serve`` from before Ray starts until everything it started is gone.

    SIGINT and SIGTERM are handled alike. Before the stop has begun (Ray starting, the apps deploying,
    or serving) the handler raises ``StopRequested``, which abandons whatever was under way; then the
    stop runs. During the stop, further signals are reported and ignored: cutting a shutdown short is
    what leaves Ray processes behind (SIGKILL still ends the process at once).

    The stop depends on whose Ray it is. A Ray this process started: Serve is shut down (which stops
    its proxies and HAProxy), then Ray, then the process waits until every process it had started is
    gone (``LEFTOVER_GRACE_SECONDS``, then kills the rest by PID). A cluster somebody else runs
    (``BIDOPT_RAY_ADDRESS``): the process only disconnects; the apps it deployed keep running there.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    LEFTOVER_GRACE_SECONDS = 30.0

    def __init__(self, say: Callable[[str], None]) -> None:
        self.say = say
        self.stopping = False
        # when this process began starting Ray, in seconds since boot: older processes are not its to
        # stop, even in its group (``exec bidopt serve`` keeps the start time of a shell that may have
        # started a Ray of its own)
        self.ray_started_at: float | None = None

    def _on_signal(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.stopping:
            try:
                self.say(f"bidopt serve: {name} while stopping; still shutting down")
            except RuntimeError:  # the main thread was itself writing to the same stream
                pass
            return
        self.stopping = True  # from here on, a second signal cannot interrupt the stop
        raise StopRequested(signum)

    def install_handlers(self) -> None:
        """(Re)install the handlers: ``ray.init`` replaces the SIGTERM handler with its own. They stay
        until the process exits, so that a signal after the stop cannot kill it before it says so."""
        for signum in self.SIGNALS:
            signal.signal(signum, self._on_signal)

    def run(self, *, host: str, port: int, on_ready: Callable[[str], None]) -> str:
        """Start Ray and the apps, call ``on_ready(url)``, serve until SIGINT or SIGTERM, stop;
        return the line saying how it stopped. An error while starting is raised after the stop."""
        from bidopt.jobs.ray_runtime import starts_local_ray

        owns_ray = starts_local_ray()
        self.ray_started_at = seconds_since_boot()
        self.install_handlers()
        try:
            try:
                start_ray()
            except SystemExit as exc:
                # ray.init installs a SIGTERM handler of its own (sys.exit(SIGTERM)) before it starts Ray
                if exc.code != signal.SIGTERM:
                    raise
                self.stopping = True
                raise StopRequested(signal.SIGTERM) from None
            self.install_handlers()
            url = run_apps(host=host, port=port)
            on_ready(url)
            while True:
                time.sleep(3600)
        except StopRequested as stop:
            self.stopping = True
            self.say(f"bidopt serve: {stop.signal_name} received, stopping")
            return self._stop(owns_ray)
        except BaseException:
            self.stopping = True
            self.say(self._stop(owns_ray))
            raise

    def _stop(self, owns_ray: bool) -> str:
        import ray

        from bidopt.settings import get_settings

        if not owns_ray:
            ray.shutdown()  # disconnects this driver; the cluster and its Serve apps are not ours to stop
            return (
                f"bidopt serve: detached from the Ray cluster at {get_settings().ray_address}; the Serve "
                f"apps keep running there (`serve shutdown` on the cluster stops them)"
            )
        # Recorded before the shutdown: a worker whose raylet has gone is no longer our descendant.
        started = self.started_processes()
        session_dir = _ray_session_dir()
        if ray.is_initialized():
            try:
                serve.shutdown()
            except Exception as exc:  # noqa: BLE001 - Ray still has to go, and Ray's going stops Serve too
                self.say(f"bidopt serve: Serve did not shut down cleanly ({exc}); shutting Ray down")
        ray.shutdown()
        # Descendants still there, and what is no descendant any more: an agent the raylet spawned
        # after the first snapshot (a signal while Ray was starting) and orphaned by the shutdown still
        # names our session folder; a signal during ray.init can come before Ray knows that folder (no
        # _global_node yet), and Ray names a local session after the PID that starts it; an agent that
        # renamed itself names neither, but stays in our group.
        started.update(self._processes_left(session_dir))
        killed = _kill_survivors(started.values(), self.LEFTOVER_GRACE_SECONDS)
        # A raylet we only killed now (its Ray never finished starting, so nothing shut it down) may
        # have spawned its agents during the grace period, after the scan: look again until nothing
        # of ours is left (CI saw a DashboardAgent and a RuntimeEnvAgent outlive the stop this way).
        for _ in range(5):
            alive = _still_running(self._processes_left(session_dir).values(), 0)
            if not alive:
                break
            killed += _kill_survivors(alive, 2.0)
        if killed:
            self.say(f"bidopt serve: killed Ray processes that outlived the shutdown: {', '.join(killed)}")
        return STOPPED_LOCAL

    def _processes_left(self, session_dir: str | None) -> dict:
        """Every process of ours the stop can still find (psutil processes by PID): descendants, what
        names our session folder or a session this process made, and Ray's in the group it leads."""
        return {
            **self.started_processes(),
            **_processes_of_session(session_dir),
            **_processes_of_own_sessions(),
            **_ray_processes_of_own_group(self.ray_started_at),
        }

    @staticmethod
    def started_processes() -> dict:
        """This process's descendants (psutil processes by PID): the local Ray and what it started."""
        import psutil

        return {p.pid: p for p in psutil.Process().children(recursive=True)}


def _ray_session_dir() -> str | None:
    """This process's local Ray session folder (``/tmp/ray/session_...``), or None."""
    try:
        from ray._private import worker

        node = worker._global_node
        return node.get_session_dir_path() if node is not None else None
    except Exception:  # noqa: BLE001 - a private API: without it only descendants are stopped
        return None


def _processes_where(keep: Callable[[object], bool], attrs: tuple[str, ...] = ("cmdline",)) -> dict:
    """The processes for which ``keep(process)`` is true (its ``info`` holds ``attrs``), psutil
    processes by PID; one that exits, or may not be looked at, while ``keep`` reads it is skipped."""
    import psutil

    found = {}
    for process in psutil.process_iter(list(attrs)):
        try:
            if keep(process):
                found[process.pid] = process
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError, PermissionError):
            continue
    return found


def _processes_of_session(session_dir: str | None) -> dict:
    """Processes whose command line names ``session_dir`` (psutil processes by PID)."""
    if not session_dir:
        return {}
    return _processes_where(lambda p: any(session_dir in arg for arg in p.info["cmdline"] or ()))


def _processes_of_own_sessions(pid: int | None = None) -> dict:
    """Processes whose command line names a Ray session this process started: Ray calls a local
    session ``session_<date>_<time>_<microseconds>_<pid of the process that made it>``."""
    import re

    own = re.compile(rf"session_\d{{4}}-\d{{2}}-\d{{2}}_\d{{2}}-\d{{2}}-\d{{2}}_\d{{6}}_{pid or os.getpid()}(?![0-9])")
    return _processes_where(lambda p: p.pid != os.getpid() and any(own.search(arg) for arg in p.info["cmdline"] or ()))


def seconds_since_boot() -> float:
    """The boot clock (``CLOCK_BOOTTIME``), which a process's start time in ``/proc`` counts on: unlike
    the wall clock, no clock step (NTP, a VM resumed) moves one and not the other."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def _ray_processes_of_own_group(since: float | None = None) -> dict:
    """Ray processes in this process's own process group or session (where this process leads it),
    created since ``since`` (``seconds_since_boot``; None: since this process started): psutil
    processes by PID.

    Ray's agents rename themselves (their command line becomes ``ray::DashboardAgent``, naming no
    session folder), and once the raylet that spawned them has gone they are nobody's descendants;
    but they stay in the raylet's process group and session, which are ours. CI saw a DashboardAgent
    and a RuntimeEnvAgent outlive the stop that way. Only processes that are Ray's (a ``ray::`` name,
    or a command line in Ray's package folder) count, so that another member of the group (``tee`` in
    ``bidopt serve | tee log``) is left alone."""
    import psutil
    import ray

    me = psutil.Process()
    group = os.getpgrp() if os.getpgrp() == me.pid else None
    session = os.getsid(0) if os.getsid(0) == me.pid else None
    if group is None and session is None:
        return {}
    ray_folder = os.path.dirname(os.path.abspath(ray.__file__)) + os.sep
    # psutil's create_time is the boot time it read once plus the start in clock ticks since boot:
    # less that boot time, it is on the boot clock, to a tick (10 ms: the slack)
    boot = psutil.boot_time()
    born = (me.create_time() - boot if since is None else since) - 0.05

    def ours(process) -> bool:
        if process.pid == me.pid or (process.info["create_time"] or 0) - boot < born:
            return False
        if not (
            (group is not None and os.getpgid(process.pid) == group)
            or (session is not None and os.getsid(process.pid) == session)
        ):
            return False
        command = " ".join(process.info["cmdline"] or ())
        return (process.info["name"] or "").startswith("ray::") or command.startswith("ray::") or ray_folder in command

    return _processes_where(ours, ("name", "cmdline", "create_time"))


def _kill_survivors(processes, grace_seconds: float) -> list[str]:
    """Wait up to ``grace_seconds`` for the (psutil) ``processes`` to end, kill the rest by PID;
    return those killed as "PID name"."""
    import psutil

    killed = []
    for process in _still_running(processes, grace_seconds):
        try:
            name = process.name()
            process.kill()
            killed.append(f"{process.pid} {name}")
        except psutil.NoSuchProcess:
            pass
    return killed


def _still_running(processes, seconds: float) -> list:
    """Those of the (psutil) ``processes`` still running after up to ``seconds``. A zombie counts as
    gone: it runs nothing, and its parent (or init) reaps it, not us."""
    import psutil

    processes = list(processes)

    def running(process) -> bool:
        try:
            return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + seconds
    while True:
        alive = [p for p in processes if running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)
