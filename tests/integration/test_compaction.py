"""Bidder events back into training, and the A/B report through the service, CLI and API.

The warehouse cases run on DuckDB/Parquet and Snowflake (fakesnow); the end-to-end case on SQLite,
DuckDB and a local events store, with a synthetic split (tests/synthetic_events.py)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from servable_runs import complete_servable
from synthetic_events import Arm, synthetic_split, write_split_events

from bidopt import service
from bidopt.cli.main import cli
from bidopt.db import access
from bidopt.db import queries as q
from bidopt.db.engine import dispose_engines, session_scope
from bidopt.db.models import utcnow
from bidopt.db.seed import prepare_demo_database
from bidopt.errors import InvalidConfig
from bidopt.events.store import open_event_store
from bidopt.optimizer.pipeline import run_window
from bidopt.settings import get_settings, reset_settings_cache
from bidopt.simulator import MarketSpec, simulate_market
from bidopt.warehouse import Window, open_warehouse
from bidopt.warehouse.contract import conform_bid_logs

H = datetime(2026, 1, 30, 12)
ALL = Window(datetime(2025, 1, 1), datetime(2027, 1, 1))


def _hour_rows(n: int, hour: datetime, seed: int = 1, entity: str = "drugs_hcp") -> pa.Table:
    logs = simulate_market(MarketSpec(entity, rows=n, days=1, end_time=hour + timedelta(hours=1), seed=seed))
    times = pa.array([hour + timedelta(seconds=3599 * i / max(n - 1, 1)) for i in range(n)], pa.timestamp("us"))
    return conform_bid_logs(logs.set_column(logs.column_names.index("event_time"), "event_time", times))


def test_replacing_a_platform_hour_is_idempotent_and_leaves_imported_rows(warehouse):
    imported = _hour_rows(300, H, seed=1)
    warehouse.load_bid_logs(imported)
    first, second = _hour_rows(200, H, seed=2), _hour_rows(120, H, seed=3)
    assert warehouse.replace_platform_hour("drugs_hcp", H, first) == 200
    assert warehouse.replace_platform_hour("drugs_hcp", H, first) == 200  # again: adds nothing
    assert warehouse.traffic_sources("drugs_hcp") == {"imported": 300, "platform": 200}
    assert warehouse.replace_platform_hour("drugs_hcp", H + timedelta(hours=1), _hour_rows(50, H + timedelta(hours=1)))
    warehouse.replace_platform_hour("drugs_hcp", H, second)  # late events: the hour is replaced, not added to
    assert warehouse.traffic_sources("drugs_hcp") == {"imported": 300, "platform": 170}
    assert warehouse.summary("drugs_hcp")["bids"] == 470
    warehouse.replace_platform_hour("drugs_hcp", H, second.slice(0, 0))  # an hour with no bids left
    assert warehouse.traffic_sources("drugs_hcp") == {"imported": 300, "platform": 50}
    agg = warehouse.aggregate_bids("drugs_hcp", ALL, ["device_type"], bid_bucket_cpm=1.0)
    assert agg["bids"].to_pylist() and sum(agg["bids"].to_pylist()) == 350


def test_platform_rows_outside_their_hour_or_entity_are_refused(warehouse):
    rows = _hour_rows(10, H)
    with pytest.raises(InvalidConfig, match="not all in the hour"):
        warehouse.replace_platform_hour("drugs_hcp", H + timedelta(hours=1), rows)
    with pytest.raises(InvalidConfig, match="another entity"):
        warehouse.replace_platform_hour("auto_intenders", H, rows)
    with pytest.raises(InvalidConfig, match="whole hour"):
        warehouse.replace_platform_hour("drugs_hcp", H + timedelta(minutes=5), rows)
    assert warehouse.summary("drugs_hcp")["bids"] == 0


def test_the_time_quantile_of_the_rows(warehouse):
    warehouse.load_bid_logs(_hour_rows(101, H))
    got = warehouse.time_quantile("drugs_hcp", ALL, 0.8)
    assert got == H + timedelta(seconds=3599 * 80 / 100)  # the 81st of 101 rows: ceil(0.8 * 101)
    assert warehouse.time_quantile("auto_intenders", ALL, 0.8) is None


def test_files_and_tables_from_before_traffic_source_still_read(tmp_path, snowflake_url):
    rows = _hour_rows(40, H)
    folder = tmp_path / "wh" / "bid_logs" / "entity_code=drugs_hcp"
    folder.mkdir(parents=True)
    pq.write_table(rows.drop_columns(["entity_code"]), folder / "part-old.parquet")
    with open_warehouse(f"duckdb:///{tmp_path / 'wh'}") as wh:
        assert wh.traffic_sources("drugs_hcp") == {None: 40}
        wh.replace_platform_hour("drugs_hcp", H, rows.slice(0, 10))
        assert wh.traffic_sources("drugs_hcp") == {None: 40, "platform": 10}
        assert wh.summary("drugs_hcp")["bids"] == 50
    import snowflake.connector

    from bidopt.warehouse.snowflake import CREATE_TABLE, connect_kwargs_from_url

    kwargs, table = connect_kwargs_from_url(snowflake_url)
    conn = snowflake.connector.connect(**kwargs)
    old_table = CREATE_TABLE.replace(",\n  traffic_source VARCHAR", "")
    assert old_table != CREATE_TABLE
    conn.cursor().execute(old_table.format(table=table))
    conn.close()
    with open_warehouse(snowflake_url) as wh:
        wh.replace_platform_hour("drugs_hcp", H, rows.slice(0, 10))
        wh.load_bid_logs(rows)
        assert wh.traffic_sources("drugs_hcp") == {"imported": 40, "platform": 10}


def test_the_holdout_is_a_share_of_rows_not_of_time(tmp_path):
    """Platform rows come in bursts (the hours a split ran): 10% a day ago, 90% in the last hour. A
    share of the window's duration would hold out the whole last hour; a share of its rows does not."""
    with open_warehouse(f"duckdb:///{tmp_path / 'wh'}") as wh:
        wh.replace_platform_hour("drugs_hcp", H - timedelta(days=1), _hour_rows(100, H - timedelta(days=1)))
        wh.replace_platform_hour("drugs_hcp", H, _hour_rows(900, H, seed=2))
        _, holdout_from = run_window(wh, "drugs_hcp", {"lookback_days": 28, "holdout_fraction": 0.2})
        agg = wh.aggregate_bids("drugs_hcp", ALL, [], bid_bucket_cpm=100.0, holdout_from=holdout_from)
    held = sum(b for b, h in zip(agg["bids"].to_pylist(), agg["is_holdout"].to_pylist()) if h)
    assert held in (200, 201)  # PERCENTILE_DISC(0.8) is the 800th of 1000 rows, held out with the rest


@pytest.fixture
def loop(sqlite_url, monkeypatch):
    """SQLite + the embedded warehouse and events store, an active 50/50 split of two servable
    runs of drugs_hcp, and its synthetic events (>= 20,000 bids) in the last hour."""
    monkeypatch.setenv("BIDOPT_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("BIDOPT_ATTRIBUTION_WINDOW_SECONDS", "7200")  # nothing is compactable by the clock
    reset_settings_cache()
    engine = prepare_demo_database(sqlite_url)
    run_ids = []
    for target in (0.4, 0.65):
        with session_scope(engine) as s:
            run_ids.append(q.create_run(s, "drugs_hcp", {"target_win_rate": target}, triggered_by="t").run_id)
        complete_servable(engine, run_ids[-1])
    run_ids.sort()
    with session_scope(engine) as s:
        split = service.set_traffic_split(s, "drugs_hcp", {run_ids[0]: 50, run_ids[1]: 50}, deployed_by="tester")
    start = utcnow() - timedelta(minutes=55)  # after the split's read slack, before now
    arms = [Arm(run_ids[0], 50, 0.4, 0.02), Arm(run_ids[1], 50, 0.65, 0.03)]
    dec, notes, truth = synthetic_split(
        "drugs_hcp",
        split["split_id"],
        arms,
        requests=23_000,
        start=start,
        duration=timedelta(minutes=50),
        test_share=0.01,
        replay_share=0.02,
        seed=4,
    )
    write_split_events(open_event_store(get_settings().events_url), "drugs_hcp", dec, notes)
    yield {"engine": engine, "run_ids": run_ids, "split_id": split["split_id"], "truth": truth, "start": start}
    dispose_engines()


def test_compacted_events_train_a_run_that_passes_validation(loop):
    from bidopt.jobs.optimize import run_optimizer

    engine, truth, start = loop["engine"], loop["truth"], loop["start"]
    until = (start + timedelta(hours=4)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with session_scope(engine) as s:
        assert service.compact_events(s, "drugs_hcp", compacted_by="t")["rows_loaded"] == 0  # window not passed
        first = service.compact_events(s, "drugs_hcp", until=until, compacted_by="t")
    bids = sum(truth[r]["bids"] for r in loop["run_ids"])
    assert first["rows_loaded"] == bids >= 20_000
    assert sum(h["wins"] for h in first["hours"]) == sum(truth[r]["wins"] for r in loop["run_ids"])
    with session_scope(engine) as s:  # again: the hour is not final yet, so it is redone, adding nothing
        again = service.compact_events(s, "drugs_hcp", until=until, compacted_by="t")
        listed = service.list_compactions(s, "drugs_hcp")
    assert again["rows_loaded"] == bids and sum(h["rows_loaded"] for h in listed) == bids
    with open_warehouse(get_settings().warehouse_url) as wh:
        assert wh.traffic_sources("drugs_hcp") == {"platform": bids}

    with session_scope(engine) as s:
        run_id = q.create_run(
            s, "drugs_hcp", {"target_win_rate": 0.5, "xgb_num_rounds": 40, "min_segment_bids": 100}, triggered_by="t"
        ).run_id
    run_optimizer(once=True, use_ray=False)
    with session_scope(engine) as s:
        run = q.get_run(s, run_id)
        assert run.status == "completed", run.error_message
        assert run.validation_status == "passed", run.validation_details


def test_the_report_through_service_cli_and_api(loop):
    engine, truth, split_id = loop["engine"], loop["truth"], loop["split_id"]
    with session_scope(engine) as s:
        report = service.split_report(s, "drugs_hcp")
        _, token = access.create_api_token(s, access.create_user(s, "vera", "viewer").username)
    assert report["split_id"] == split_id and report["is_active"]
    assert report["test_requests_excluded"] == truth["test_requests"]
    for arm in report["arms"]:
        assert arm["bids"] == truth[arm["run_id"]]["bids"]
        assert arm["win_rate"]["low"] <= truth[arm["run_id"]]["win_rate"] <= arm["win_rate"]["high"]
    assert [c["significant"] for c in report["comparisons"] if c["metric"] == "win_rate"] == [True]

    runner = CliRunner()
    out = runner.invoke(cli, ["deploy", "report", "drugs_hcp", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["arms"] == report["arms"]
    text = runner.invoke(cli, ["deploy", "report", "drugs_hcp", "--split", str(split_id)])
    assert text.exit_code == 0 and "WIN_RATE [95%]" in text.output and "two-proportion z-test" in text.output
    assert "PRICED_WIN_RATE [95%]" in text.output and "FLOOR_NO_BIDS" in text.output
    missing = runner.invoke(cli, ["deploy", "report", "drugs_hcp", "--split", str(10**400)])
    assert missing.exit_code == 1 and "no split" in missing.output
    compact = runner.invoke(cli, ["events", "compact", "drugs_hcp", "--until", "tomorrow"])
    assert compact.exit_code == 1 and "ISO 8601" in compact.output
    shown = runner.invoke(cli, ["events", "show", "drugs_hcp"])
    assert shown.exit_code == 0 and "no compacted hours" in shown.output

    from bidopt.serve.api import create_app

    client = TestClient(create_app(), raise_server_exceptions=False)
    auth = {"Authorization": f"Bearer {token}"}
    got = client.get("/api/entities/drugs_hcp/report", headers=auth)
    assert got.status_code == 200 and got.json()["arms"] == report["arms"]
    assert client.get(f"/api/entities/drugs_hcp/report?split={split_id}", headers=auth).status_code == 200
    assert client.get("/api/entities/drugs_hcp/report?split=99", headers=auth).status_code == 404
    assert client.get("/api/entities/drugs_hcp/report?split=1e400", headers=auth).status_code == 422
    assert client.get("/api/entities/nope/report", headers=auth).status_code == 404
    assert client.get("/api/entities/auto_intenders/report", headers=auth).status_code == 404  # never split
    assert client.get("/api/entities/drugs_hcp/report").status_code == 401
