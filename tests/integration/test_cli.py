"""The CLI end to end on the embedded SQLite default: parse, call, print; bad input -> one line, exit 1."""

import json

import pytest
from click.testing import CliRunner

from bidopt.cli.main import cli


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli, list(args), catch_exceptions=False)

    return invoke


@pytest.fixture
def seeded(run):
    assert run("db", "upgrade").exit_code == 0
    assert run("db", "seed-demo").exit_code == 0
    return run


def test_seed_is_idempotent_and_entities_show_static_settings(seeded):
    assert "already present" in seeded("db", "seed-demo").output
    out = seeded("entities", "list").output
    assert "drugs_hcp" in out and "auto_intenders" in out
    view = json.loads(seeded("entities", "show", "drugs_hcp", "--json").output)
    static = {k: v for k, v in view["static_configs"].items() if not k.startswith("guardrail_")}
    assert static == {"floor_available": False, "npi_enabled": True, "domain_enabled": True}
    assert view["supply_source"] == "ADX" and view["anchor_feature"] == "geo_region_name"


def test_create_list_show_run(seeded):
    res = seeded(
        "runs", "create", "drugs_hcp", "-c", "target_win_rate=0.4", "-c", "max_bid_cpm=20", "--by", "alice", "--json"
    )
    assert res.exit_code == 0, res.output
    run = json.loads(res.output)
    assert run["status"] == "pending" and run["triggered_by"] == "alice"
    assert run["configs"]["business"]["target_win_rate"] == 0.4
    listed = json.loads(seeded("runs", "list", "--entity", "drugs_hcp", "--json").output)
    assert [r["run_id"] for r in listed] == [run["run_id"]]
    shown = seeded("runs", "show", run["run_id"]).output
    assert "target_win_rate" in shown and "pending" in shown


@pytest.mark.parametrize(
    "args,message",
    [
        (("runs", "create", "nope"), "unknown entity: nope"),
        (("runs", "create", "drugs_hcp", "-c", "colour=red"), "unknown config key: colour"),
        (("runs", "create", "drugs_hcp", "-c", "max_bid_cpm=lots"), "max_bid_cpm must be a number"),
        (("runs", "create", "drugs_hcp", "-c", "target_win_rate"), "expected key=value"),
        (("runs", "show", "20990101_000000"), "unknown run"),
        (("runs", "list", "--status", "sleeping"), "status must be one of"),
        (("entities", "show", "nope"), "unknown entity: nope"),
    ],
)
def test_bad_input_is_one_line_and_non_zero(seeded, args, message):
    res = seeded(*args)
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], res.output
    # nothing was written
    assert json.loads(seeded("runs", "list", "--json").output) == []


def test_missing_schema_says_what_to_do(run):
    res = run("entities", "list")
    assert res.exit_code == 1 and "bidopt db upgrade" in res.output


def test_settings_never_print_secrets(run, monkeypatch):
    from bidopt.settings import reset_settings_cache

    monkeypatch.setenv("BIDOPT_DATABASE_URL", "postgresql+psycopg://bid:s3cr3t@db.example:5432/meta")
    monkeypatch.setenv("BIDOPT_WAREHOUSE_URL", "snowflake://svc:hunter2@acct/db/schema?warehouse=wh")
    reset_settings_cache()
    for args in (("settings",), ("settings", "--json")):
        out = run(*args).output
        assert "s3cr3t" not in out and "hunter2" not in out
        assert "bid:***@db.example:5432" in out and "svc:***@acct" in out


def test_settings_repr_hides_passwords(monkeypatch):
    from bidopt.settings import get_settings, reset_settings_cache

    monkeypatch.setenv("BIDOPT_CACHE_URL", "memcached://u:pw123@127.0.0.1:11211")
    reset_settings_cache()
    assert "pw123" not in repr(get_settings()) and "pw123" not in str(get_settings())


def test_runs_show_newest_of_an_entity(seeded):
    first = json.loads(seeded("runs", "create", "drugs_hcp", "--json").output)["run_id"]
    assert json.loads(seeded("runs", "show", "--entity", "drugs_hcp", "--json").output)["run_id"] == first
    res = seeded("runs", "show", "--entity", "auto_intenders")
    assert res.exit_code == 1 and "auto_intenders has no runs" in res.output
    assert seeded("runs", "show").exit_code == 2  # usage error: neither RUN_ID nor --entity


def test_deploy_refuses_unloadable_runs_and_show_says_whether_bidders_serve_the_split(seeded):
    from servable_runs import complete_servable

    from bidopt.artifacts import open_artifact_store
    from bidopt.bidder.loader import Refresher
    from bidopt.db.engine import get_engine
    from bidopt.settings import get_settings

    url = get_settings().database_url
    a, b, broken = [json.loads(seeded("runs", "create", "drugs_hcp", "--json").output)["run_id"] for _ in range(3)]
    for run_id in (a, b):
        complete_servable(get_engine(url), run_id)
    open_artifact_store(complete_servable(get_engine(url), broken)).delete("manifest.json")
    res = seeded("deploy", "set", "drugs_hcp", f"{a}=50", f"{broken}=50")
    assert res.exit_code == 1 and f"run {broken} cannot be served" in res.output
    assert len([line for line in res.output.splitlines() if line.strip()]) == 1
    assert seeded("deploy", "set", "drugs_hcp", f"{a}=100").exit_code == 0
    assert "bidders: no bidder replica is reporting" in seeded("deploy", "show", "drugs_hcp").output

    replica = Refresher(url, interval=60, replica_id="bidder-host:7:abc")
    try:
        replica.first_load(timeout=5)
        assert "bidders: live on all 1 bidder replica" in seeded("deploy", "show", "drugs_hcp").output
        assert seeded("deploy", "set", "drugs_hcp", f"{b}=100").exit_code == 0
        out = seeded("deploy", "show", "drugs_hcp").output
        assert "bidders: 1 of 1 bidder replicas lag" in out
        assert "bidder-host:7:abc" in out and "lagging" in out and "has not refreshed since the change" in out
        view = json.loads(seeded("deploy", "show", "drugs_hcp", "--json").output)
        assert [(r["replica_id"], r["state"], r["split_id"]) for r in view["bidders"]["replicas"]] == [
            ("bidder-host:7:abc", "lagging", view["split_id"] - 1)
        ]
        replica.refresh_once()
        assert "bidders: live on all 1 bidder replica" in seeded("deploy", "show", "drugs_hcp").output
    finally:
        replica.stop()


def test_users_and_tokens(seeded):
    from bidopt.db import access
    from bidopt.db.engine import get_engine, session_scope
    from bidopt.settings import get_settings

    res = seeded("users", "add", "ann", "--role", "operator")
    assert res.exit_code == 0 and "added operator ann; give them a token with `bidopt tokens create ann`" in res.output
    res = seeded("users", "add", "ann", "--role", "viewer")
    assert res.exit_code == 1 and res.output.strip() == "Error: user ann exists already"
    assert [
        (u["username"], u["role"], u["is_active"]) for u in json.loads(seeded("users", "list", "--json").output)
    ] == [("ann", "operator", True)]
    assert seeded("users", "list").output.splitlines()[0].split() == ["USERNAME", "ROLE", "IS_ACTIVE", "CREATED_AT"]

    res = seeded("tokens", "create", "ann", "--name", "ci")
    assert res.exit_code == 0 and res.output.startswith("token 1 for ann (shown once): bo_"), res.output
    token = res.output.split()[-1]
    assert seeded("tokens", "create", "bob").output.strip() == "Error: unknown user: bob"
    listed = json.loads(seeded("tokens", "list", "--json").output)
    assert listed == [
        {
            "token_id": 1,
            "username": "ann",
            "role": "operator",
            "name": "ci",
            "created_at": listed[0]["created_at"],
            "revoked": False,
        }
    ]
    assert token not in seeded("tokens", "list").output

    engine = get_engine(get_settings().database_url)
    with session_scope(engine) as s:
        assert access.authenticate_token(s, token).username == "ann"
    assert seeded("tokens", "revoke", "1").output.strip() == "revoked token 1"
    assert seeded("tokens", "revoke", "9").output.strip() == "Error: unknown token id: 9"
    with session_scope(engine) as s:
        assert access.authenticate_token(s, token) is None
    assert json.loads(seeded("tokens", "list", "--json").output)[0]["revoked"] is True


def test_python_dash_m_bidopt_is_the_cli():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "bidopt", "settings", "--json"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["home"]


def test_the_submitted_job_is_a_valid_optimizer_run_command():
    """``bidopt optimizer submit`` runs ``python -m bidopt optimizer run ...`` on the cluster."""
    import shlex

    from bidopt.cli.optimizer import optimizer_run
    from bidopt.jobs.submit import optimizer_entrypoint

    for once in (True, False):
        command = shlex.split(optimizer_entrypoint(once=once, parallel=3, python="/opt/py/bin/python"))
        assert command[:5] == ["/opt/py/bin/python", "-m", "bidopt", "optimizer", "run"]
        ctx = optimizer_run.make_context("run", command[5:])
        assert ctx.params["parallel"] == 3 and ctx.params["once"] is once


def test_database_errors_session_scope_does_not_translate_still_get_one_line(monkeypatch):
    """`db upgrade` connects through Alembic, not ``session_scope``: an unreachable database is
    still one line and exit 1."""
    import socket

    from bidopt.settings import reset_settings_cache

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    monkeypatch.setenv("BIDOPT_DATABASE_URL", f"postgresql+psycopg://bid:s3cr3t@127.0.0.1:{port}/meta")
    reset_settings_cache()
    res = CliRunner().invoke(cli, ["db", "upgrade"])
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("Error: database error: "), res.output
    assert "s3cr3t" not in res.output
