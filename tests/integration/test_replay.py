"""The offline replay end to end: a simulated run replayed on its own training window against the
simulator's truth; the warehouse's raw batches on both backends; the CLI, the API route, Ray Data."""

from __future__ import annotations

import json
from datetime import datetime

import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from servable_runs import complete_servable

from bidopt import replays
from bidopt.artifacts import read_run_artifacts
from bidopt.cli.main import cli
from bidopt.db import access
from bidopt.db import queries as q
from bidopt.db.engine import dispose_engines, get_engine, session_scope
from bidopt.db.seed import prepare_demo_database
from bidopt.errors import Conflict, InvalidConfig
from bidopt.jobs.optimize import run_optimizer
from bidopt.jobs.replay import replay_arrow_on_ray, replay_local
from bidopt.optimizer.replay import combine_partials, replay_rows
from bidopt.serve.api import create_app
from bidopt.settings import get_settings, reset_settings_cache
from bidopt.simulator import MarketSpec, simulate_market, true_win_probability
from bidopt.warehouse import Window, open_warehouse

SPEC = MarketSpec("drugs_hcp", rows=300_000, days=14, seed=11, npi_enabled=True, n_domains=200)
CONFIGS = {"target_win_rate": 0.4, "exploration_mode": "none"}


@pytest.fixture(scope="module")
def simulated_home(tmp_path_factory):
    """One embedded platform for the module: simulated drugs_hcp logs whose truth we keep, a completed
    run at target 0.4 and one at 0.6 (cheaper), the latter the active split. ``(env, run_id, other, frame)``."""
    home = tmp_path_factory.mktemp("replay_home")
    env = {"BIDOPT_HOME": str(home), "BIDOPT_DATABASE_URL": f"sqlite:///{home / 'meta.db'}"}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        reset_settings_cache()
        engine = prepare_demo_database(env["BIDOPT_DATABASE_URL"])
        table = simulate_market(SPEC)
        with open_warehouse(get_settings().warehouse_url) as wh:
            wh.load_bid_logs(table)
        with session_scope(engine) as s:
            run_id = q.create_run(s, "drugs_hcp", CONFIGS, triggered_by="test").run_id
            other = q.create_run(
                s, "drugs_hcp", {**CONFIGS, "target_win_rate": 0.6, "xgb_num_rounds": 40}, triggered_by="test"
            ).run_id
        report = run_optimizer(once=True, use_ray=False)
        assert [r["status"] for r in report.processed] == ["completed", "completed"]
        with session_scope(engine) as s:
            q.replace_traffic_split(s, "drugs_hcp", [(other, 100)], deployed_by="test")
        dispose_engines()
    reset_settings_cache()
    return env, run_id, other, table.to_pandas()


@pytest.fixture
def simulated_run(simulated_home, monkeypatch):
    env, run_id, other, frame = simulated_home
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    reset_settings_cache()
    yield get_engine(env["BIDOPT_DATABASE_URL"]), run_id, other, frame
    dispose_engines()


def _training_rows(engine, run_id, frame):
    with session_scope(engine) as s:
        manifest = read_run_artifacts(q.get_run(s, run_id).s3_output_path, [])[0]
    start, cut = datetime.fromisoformat(manifest["window"][0]), datetime.fromisoformat(manifest["holdout_from"])
    return frame[(frame["event_time"] >= start) & (frame["event_time"] < cut)].reset_index(drop=True)


def test_a_replay_on_the_runs_training_window_predicts_the_true_win_rate(simulated_run):
    engine, run_id, other, frame = simulated_run
    with session_scope(engine) as s:
        view = replays.replay_run(s, run_id, window="training", engine="local")
        replayed, _ = replays.load_replay_run(s, run_id, "first_price")
    total = view["runs"][0]["total"]
    assert view["engine"] == "local" and [r["role"] for r in view["runs"]] == ["replayed", "active split"]
    # the same requests, priced by the same code, scored by the simulator's truth
    train = _training_rows(engine, run_id, frame)
    rows = replay_rows(train, replayed)
    bids = rows["bids"].to_numpy()
    assert view["requests"] == len(train) and total["bids"] == int(bids.sum()) > 0.9 * len(train)
    truth = true_win_probability(
        rows["bid_cpm"].to_numpy()[bids],
        train["truth_mu"].to_numpy()[bids],
        train["truth_sigma"].to_numpy()[bids],
        train["floor_cpm"].to_numpy()[bids],
    ).mean()
    print(f"replay on the training window: predicted win rate {total['expected_win_rate']:.4f}, truth {truth:.4f}")
    assert abs(total["expected_win_rate"] - truth) < 0.01, (total["expected_win_rate"], truth)
    assert total["expected_win_rate"] == pytest.approx(rows["p_win"][bids].mean())
    assert total["ecpm"] == pytest.approx(total["expected_spend_cpm"] / total["expected_wins"])
    assert total["ecpm"] <= total["mean_bid_cpm"] * 1.5  # first price: eCPM is a mean of winning bids
    assert sum(seg["requests"] for seg in view["runs"][0]["segments"]) <= len(train)


def test_cli_api_and_ray_data_agree_and_bad_input_is_refused(simulated_run, tmp_path):
    engine, run_id, other, frame = simulated_run

    since, until = "2026-01-25T00:00:00Z", "2026-01-27T00:00:00Z"
    result = CliRunner().invoke(cli, ["runs", "replay", run_id, "--since", since, "--until", until, "--json"])
    assert result.exit_code == 0, result.output
    view = json.loads(result.output)
    assert [(r["run_id"], r["role"], r["traffic_pct"]) for r in view["runs"]] == [
        (run_id, "replayed", None),
        (other, "active split", 100),
    ]
    low, high = (r["total"] for r in view["runs"])
    assert low["requests"] == high["requests"] == view["requests"] > 0
    assert high["expected_win_rate"] > low["expected_win_rate"] + 0.1  # a 0.6 target bids higher

    text = CliRunner().invoke(cli, ["runs", "replay", run_id, "--since", since, "--until", until, "--segments", "3"])
    assert text.exit_code == 0 and "BID_SHARE" in text.output and "active split" in text.output
    bad = CliRunner().invoke(cli, ["runs", "replay", run_id, "--since", "2026-02-02", "--until", "2026-02-01"])
    assert bad.exit_code != 0 and "since must be before until" in bad.output

    with session_scope(engine) as s:
        access.create_user(s, "vera", "viewer")
        token = access.create_api_token(s, "vera")[1]
    client = TestClient(create_app(), raise_server_exceptions=False)
    auth = {"Authorization": f"Bearer {token}"}
    got = client.get(f"/api/runs/{run_id}/replay", params={"since": since, "until": until, "top": 5}, headers=auth)
    assert got.status_code == 200, got.text
    api = got.json()
    for a, b in zip(api["runs"], view["runs"], strict=True):
        assert a["total"] == pytest.approx(b["total"])
    assert len(api["runs"][0]["segments"]) == 5
    assert client.get(f"/api/runs/{run_id}/replay", params={"since": "never"}, headers=auth).status_code == 422
    assert client.get(f"/api/runs/{run_id}/replay", params={"engine": "spark"}, headers=auth).status_code == 422
    assert client.get(f"/api/runs/{run_id}/replay", params={"engine": "ray"}, headers=auth).status_code == 422
    assert client.get(f"/api/runs/{run_id}/replay").status_code == 401
    with session_scope(engine) as s:
        pending = q.create_run(s, "drugs_hcp", CONFIGS, triggered_by="test").run_id
    assert client.get(f"/api/runs/{pending}/replay", headers=auth).status_code == 409

    # Ray Data over the same Arrow batches gives the same sums as the loop in this process
    with session_scope(engine) as s:
        runs = [replays.load_replay_run(s, r, "first_price")[0] for r in (run_id, other)]
    with open_warehouse(get_settings().warehouse_url) as wh:
        window = Window(datetime(2026, 1, 25), datetime(2026, 1, 26))
        batches = list(
            wh.bid_log_batches(
                "drugs_hcp",
                window,
                ["domain", "floor_cpm", "geo_region_name", "os_code", "device_type", "npi_matched", "browser_code"],
                batch_rows=4_000,
            )
        )
    assert len(batches) > 2
    local = combine_partials(replay_local(batches, runs), [run_id, other], top_segments=None)
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        on_ray = combine_partials(
            replay_arrow_on_ray([pa.Table.from_batches([b]) for b in batches], runs, batch_rows=4_000),
            [run_id, other],
            top_segments=None,
        )
    finally:
        ray.shutdown()
    for a, b in zip(local, on_ray):
        assert a["total"] == pytest.approx(b["total"])
        assert {s["segment_key"]: s["bids"] for s in a["segments"]} == {
            s["segment_key"]: s["bids"] for s in b["segments"]
        }


def test_runs_of_another_entity_or_without_a_win_encoder_are_refused(simulated_run):
    engine, run_id, _, _ = simulated_run
    with session_scope(engine) as s:
        foreign = q.create_run(s, "auto_intenders", {}, triggered_by="test").run_id
        with pytest.raises(InvalidConfig, match="not a run of drugs_hcp"):
            replays.replay_run(s, run_id, against=[foreign])
        with pytest.raises(InvalidConfig, match="window must be one of"):
            replays.replay_run(s, run_id, window="yesterday")
        with pytest.raises(InvalidConfig, match="no bid logs"):
            replays.replay_run(s, run_id, since="2020-01-01", until="2020-01-02")
        old = q.create_run(s, "drugs_hcp", {}, triggered_by="test").run_id
    complete_servable(engine, old)  # a bid table a bidder can load, but no win model
    with session_scope(engine) as s:
        with pytest.raises(Conflict, match=f"run {old} cannot be replayed: win_model.ubj is not in the manifest"):
            replays.replay_run(s, old)
        with pytest.raises(Conflict, match=f"run {old} cannot be replayed"):
            replays.replay_run(s, run_id, against=[old])
    # in the active split (not named by the caller), such a run is left out with its reason and the
    # replay compares with the rest, rather than failing for every split made before replays existed
    other = simulated_run[2]
    with session_scope(engine) as s:
        q.replace_traffic_split(s, "drugs_hcp", [(other, 50), (old, 50)], deployed_by="test")
    try:
        with session_scope(engine) as s:
            result = replays.replay_run(s, run_id, window="holdout")
        assert [r["run_id"] for r in result["runs"]] == [run_id, other]
        assert [r["run_id"] for r in result["not_replayable"]] == [old]
        assert "cannot be replayed" in result["not_replayable"][0]["reason"]
    finally:
        with session_scope(engine) as s:
            q.replace_traffic_split(s, "drugs_hcp", [(other, 100)], deployed_by="test")


@pytest.mark.parametrize("rows", [0, 2500])
def test_raw_bid_log_batches_on_both_backends(warehouse, rows):
    window = Window(datetime(2020, 1, 1), datetime(2030, 1, 1))
    columns = ["event_time", "geo_region_name", "npi_matched", "floor_cpm", "bid_cpm"]
    if rows:
        table = simulate_market(MarketSpec("e1", rows=rows, seed=2, floor_available=True, npi_enabled=True))
        warehouse.load_bid_logs(table)
        warehouse.load_bid_logs(simulate_market(MarketSpec("e2", rows=300, seed=3)))
    batches = list(warehouse.bid_log_batches("e1", window, columns, batch_rows=1000))
    assert sum(b.num_rows for b in batches) == rows and all(b.num_rows <= 1000 for b in batches)
    assert len(batches) >= (3 if rows else 0)
    if rows:
        got = pa.Table.from_batches(batches)
        assert got.schema.names == columns and got.schema.field("event_time").type == pa.timestamp("us")
        assert got.schema.field("npi_matched").type == pa.bool_()
        want = table.select(columns).sort_by("event_time")
        assert got["bid_cpm"].to_pylist() == want["bid_cpm"].to_pylist()
        assert got["event_time"].to_pylist() == want["event_time"].to_pylist()
        assert got["floor_cpm"].null_count == want["floor_cpm"].null_count
        assert np.array_equal(
            got["npi_matched"].to_numpy(zero_copy_only=False), want["npi_matched"].to_numpy(zero_copy_only=False)
        )
        inside = Window(want["event_time"][100].as_py(), want["event_time"][200].as_py())
        assert sum(b.num_rows for b in warehouse.bid_log_batches("e1", inside, columns)) == 100
    for bad in (["won; DROP TABLE x"], [], ["bid_cpm", "bid_cpm"]):
        with pytest.raises(InvalidConfig, match="bid-log columns"):
            list(warehouse.bid_log_batches("e1", window, bad))
    with pytest.raises(InvalidConfig, match="batch_rows"):
        list(warehouse.bid_log_batches("e1", window, columns, batch_rows=0))


@pytest.mark.slow
def test_the_run_page_replays_against_the_active_split(simulated_run):
    import shutil
    import socket
    import threading
    import time

    import uvicorn
    from servers import missing_service
    from test_ui_browser import CHROMIUM_FLAGS

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        missing_service("chromium is not installed (Debian package `chromium`)")
    from playwright.sync_api import sync_playwright

    engine, run_id, other, _ = simulated_run
    with session_scope(engine) as s:
        access.create_user(s, "wanda", "viewer")
        token = access.create_api_token(s, "wanda")[1]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=exe, args=CHROMIUM_FLAGS)
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"http://127.0.0.1:{port}/")
            page.fill("#token-input", token)
            page.click("#token-save")
            page.wait_for_selector("#entities-table")
            page.goto(f"http://127.0.0.1:{port}/#/run/{run_id}")
            page.wait_for_selector("#replay-form")
            page.select_option("#replay-form select[name=window]", "holdout")
            page.click("#replay-run")
            page.wait_for_selector("#replay-table", timeout=120_000)
            rows = page.locator("#replay-table tr[data-run]")
            assert rows.count() == 2 and other in page.inner_text("#replay-table")
            assert "active split (100%)" in page.inner_text("#replay-table")
            assert page.locator("#replay-win-rate rect.bar").count() == 2
            assert page.locator("#replay-segments tr").count() > 5
            browser.close()
        assert not errors, errors
    finally:
        srv.should_exit = True
        thread.join()
