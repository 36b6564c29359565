"""``python -m bidopt.jobs.optimize``: the optimizer job as a script, without the CLI."""

import os
import subprocess
import sys

from bidopt import service
from bidopt.data import generate_into_warehouse, get_warehouse, market_spec_for_entity
from bidopt.db.engine import get_engine, session_scope
from bidopt.db.migrate import upgrade_database
from bidopt.db.seed import seed_demo_catalogue
from bidopt.settings import get_settings

FAST = {"xgb_num_rounds": "20", "min_segment_bids": "100", "min_domain_bids": "300"}


def _job(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "bidopt.jobs.optimize", *args]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ}, timeout=300)


def test_the_job_script_runs_without_importing_the_cli():
    upgrade_database(get_settings().database_url)
    code = (
        "import sys\n"
        "from bidopt.jobs.optimize import main\n"
        "main(sys.argv[1:])\n"
        "print('cli modules:', sorted(m for m in sys.modules if m.startswith('bidopt.cli')))\n"
    )
    out = _job("--once", "--no-ray", code=code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["no pending runs", "cli modules: []"]

    with session_scope(get_engine(get_settings().database_url)) as s:
        seed_demo_catalogue(s)
        run_id = service.create_run(s, "drugs_hcp", FAST, triggered_by="test")["run_id"]
    with get_warehouse() as wh:
        generate_into_warehouse(wh, market_spec_for_entity(None, "drugs_hcp", rows=20_000, seed=3))
    out = _job("--once", "--no-ray", code=code)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert (
        f"{run_id}: selecting features from browser_code, device_type, geo_region_name, npi_matched, os_code" in lines
    )  # the job's progress (logging), on the console as with `bidopt optimizer run`
    assert any(line.startswith(f"run {run_id} completed: ") for line in lines)
    assert lines[-1] == "cli modules: []"


def test_the_job_script_reports_an_error_in_one_line():
    out = _job("--once", "--no-ray")  # no schema yet
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "bidopt db upgrade" in lines[0], out.stderr
    assert _job("--parallel", "two").returncode == 2  # a usage error, as with click
