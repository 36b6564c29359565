"""The optimizer job against a real metadata DB (SQLite and PostgreSQL), warehouse and artifact store."""

import io
import json
import threading
from urllib.parse import urlsplit

import pandas as pd
import pytest
from click.testing import CliRunner
from sqlalchemy import update

from bidopt.artifacts import MANIFEST, open_artifact_store, read_run_artifact, sha256
from bidopt.cli.main import cli
from bidopt.db import queries as q
from bidopt.db.engine import session_scope
from bidopt.db.models import OptRunConfig
from bidopt.jobs.optimize import run_optimizer

FAST = {"xgb_num_rounds": "40", "min_segment_bids": "100", "min_domain_bids": "300"}


def _create(engine, entity="drugs_hcp", **configs):
    with session_scope(engine) as s:
        return q.create_run(s, entity, FAST | configs, triggered_by="test").run_id


def _run(engine, run_id):
    with session_scope(engine) as s:
        run = q.get_run(s, run_id)
        return {
            "run": run,
            "features": q.get_run_features_with_macros(s, run_id),
            "metrics": q.get_run_metrics(s, run_id),
        }


def test_pending_runs_become_validated_bid_tables(platform):
    a = _create(platform, target_win_rate="0.4")  # adjust_unchosen_features: on by default
    b = _create(platform, "auto_intenders", adjust_unchosen_features="false")  # on by default: off honoured
    report = run_optimizer(once=True, use_ray=False)
    assert [r["status"] for r in report.processed] == ["completed", "completed"]

    got = _run(platform, a)
    run = got["run"]
    assert (run.status, run.validation_status) == ("completed", "passed")
    assert run.started_at <= run.completed_at and run.error_message is None
    feats = got["features"]
    assert feats[0].feature_name == "geo_region_name" and feats[0].is_anchor and feats[0].signal_score is None
    assert [f.feature_order for f in feats] == list(range(1, len(feats) + 1))
    assert all(f.macro_id is not None and f.macro_template for f in feats)
    assert all(0 <= f.signal_score <= 100 for f in feats[1:])
    assert set(got["metrics"]) >= {"win_rate_model", "ctr_model", "bid_landscape", "global_stats"}
    assert got["metrics"]["win_rate_model"]["auc"] > 0.6
    # the win model adjusts for the candidates not chosen (the logging policy followed them too)
    encoder = json.loads(read_run_artifact(run.s3_output_path, "win_encoder.json"))
    adjusted = [f for f in encoder["features"] if f not in {x.feature_name for x in feats} | {"domain"}]
    assert adjusted and len(adjusted) == got["metrics"]["win_rate_model"]["adjusted_features"]
    assert encoder["features"] == [*(f.feature_name for f in feats), *adjusted, "domain"]

    # artifacts: manifest checks out, bid table matches the run's stats
    assert run.s3_output_path.endswith(f"/drugs_hcp/runs/{a}/attempt-1")  # the completing attempt's folder
    manifest = json.loads(open_artifact_store(run.s3_output_path).get_bytes(MANIFEST))
    assert set(manifest["files"]) >= {
        "suggested_bids.csv",
        "domain_multipliers.csv",
        "win_model.ubj",
        "ctr_model.ubj",
        "metrics.json",
        "features.json",
        "win_curves.json",
    }
    curves = json.loads(read_run_artifact(run.s3_output_path, "win_curves.json"))
    assert len(curves["segments"]) == 8 and len(curves["bids"]) == 40
    for seg in curves["segments"]:
        assert all(a <= b + 1e-9 for a, b in zip(seg["win_rate"], seg["win_rate"][1:]))  # monotone
    bids = pd.read_csv(io.BytesIO(read_run_artifact(run.s3_output_path, "suggested_bids.csv")))
    seg = bids[bids.level == "segment"]
    assert len(seg) == run.segments_count
    assert seg.bid_cpm.median() == pytest.approx(run.bid_median)
    assert (seg.segment_key.str.count(r"\|") == len(feats) - 1).all()
    assert bids.bid_cpm.between(0.1, 25.0).all()
    mult = pd.read_csv(io.BytesIO(read_run_artifact(run.s3_output_path, "domain_multipliers.csv")))
    assert len(mult) > 0 and mult.multiplier.between(0.5, 2.0).all()

    # auto_intenders: floors on, domains off, npi off -- each static config changes the output
    other = _run(platform, b)
    assert other["metrics"]["win_rate_model"]["adjusted_features"] == 0
    names = [f.feature_name for f in other["features"]]
    assert "npi_matched" not in names
    scored = json.loads(read_run_artifact(other["run"].s3_output_path, "features.json"))["candidates_scored"]
    assert "floor_bucket" in {c["feature"] for c in scored} and "npi_matched" not in {c["feature"] for c in scored}
    assert pd.read_csv(io.BytesIO(read_run_artifact(other["run"].s3_output_path, "domain_multipliers.csv"))).empty


def test_invalid_configs_fail_readably_and_the_job_goes_on(platform):
    bad = _create(platform)
    good = _create(platform)
    with session_scope(platform) as s:  # a value that bypassed the API (hand-edited row)
        s.execute(
            update(OptRunConfig)
            .where(OptRunConfig.run_id == bad, OptRunConfig.config_key == "target_win_rate")
            .values(config_value="1.5")
        )
    report = run_optimizer(once=True, use_ray=False)
    assert {r["run_id"]: r["status"] for r in report.processed} == {bad: "failed", good: "completed"}
    run = _run(platform, bad)["run"]
    assert run.status == "failed" and "target_win_rate must be < 1.0" in run.error_message
    assert run.s3_output_path is None and _run(platform, bad)["features"] == []


def test_a_failure_after_the_upload_removes_the_attempts_own_files(platform, monkeypatch):
    run_id = _create(platform)

    def boom(*args, **kwargs):
        raise RuntimeError("database went away")

    monkeypatch.setattr(q, "mark_run_completed", boom)
    report = run_optimizer(once=True, use_ray=False)
    assert report.processed[0]["status"] == "failed"
    with session_scope(platform) as s:
        run = q.get_run(s, run_id)
        assert run.status == "failed" and "database went away" in run.error_message
        entity = run.entity
    from bidopt.artifacts import attempt_output_url, run_output_url
    from bidopt.settings import get_settings

    url = attempt_output_url(run_output_url(get_settings().artifact_url, entity.base_path, run_id), 1)
    assert report.processed[0]["attempt"] == 1
    assert not open_artifact_store(url).exists(MANIFEST)
    assert not open_artifact_store(url).exists("suggested_bids.csv")  # its own folder: it cleans up after itself


def test_an_entity_without_logs_fails_with_the_reason(platform_db):
    run_id = _create(platform_db)
    run_optimizer(once=True, use_ray=False)
    assert "no bid logs for drugs_hcp" in _run(platform_db, run_id)["run"].error_message


def test_two_optimizers_never_process_the_same_run(platform):
    ids = {_create(platform, "drugs_hcp" if i % 2 else "auto_intenders", xgb_num_rounds="10") for i in range(6)}
    seen, lock = [], threading.Lock()

    def worker():
        for r in run_optimizer(once=True, use_ray=False).processed:
            with lock:
                seen.append(r["run_id"])

    threads = [threading.Thread(target=worker) for _ in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(seen) == sorted(ids)


def test_artifacts_go_to_s3_when_the_base_path_is_s3(platform, s3_bucket):
    from bidopt.db.models import OptEntity

    with session_scope(platform) as s:
        s.execute(
            update(OptEntity)
            .where(OptEntity.entity_code == "drugs_hcp")
            .values(base_path=f"s3://{s3_bucket}/lines/drugs_hcp")
        )
    run_id = _create(platform)
    assert run_optimizer(once=True, use_ray=False).processed[0]["status"] == "completed"
    url = _run(platform, run_id)["run"].s3_output_path
    assert url == f"s3://{s3_bucket}/lines/drugs_hcp/runs/{run_id}/attempt-1"
    import boto3

    s3 = boto3.client("s3", endpoint_url=__import__("os").environ["BIDOPT_S3_ENDPOINT_URL"])
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert f"lines/drugs_hcp/runs/{run_id}/attempt-1/{MANIFEST}" in keys
    body = s3.get_object(Bucket=s3_bucket, Key=f"lines/drugs_hcp/runs/{run_id}/attempt-1/suggested_bids.csv")[
        "Body"
    ].read()
    manifest = json.loads(open_artifact_store(url).get_bytes(MANIFEST))
    assert manifest["files"]["suggested_bids.csv"]["sha256"] == sha256(body)
    # a corrupted object is caught by its checksum
    s3.put_object(Bucket=s3_bucket, Key=f"lines/drugs_hcp/runs/{run_id}/attempt-1/suggested_bids.csv", Body=b"x")
    from bidopt.errors import InvalidConfig

    with pytest.raises(InvalidConfig, match="checksum"):
        read_run_artifact(url, "suggested_bids.csv")
    assert urlsplit(url).scheme == "s3"


def test_cli_runs_the_queue(platform):
    ok = _create(platform)
    runner = CliRunner()
    res = runner.invoke(cli, ["optimizer", "run", "--once", "--no-ray"])
    assert res.exit_code == 0 and f"run {ok} completed" in res.output, res.output
    assert "selecting features" in res.output  # progress of the long steps
    res = runner.invoke(cli, ["optimizer", "run", "--once", "--no-ray"])
    assert res.exit_code == 0 and "no pending runs" in res.output


def test_module_entrypoint_for_ray_job_submit(platform, tmp_path):
    """``python -m bidopt.jobs.optimize``, the plain job script: same options and effect as ``bidopt optimizer run``."""
    import os
    import subprocess
    import sys

    run_id = _create(platform)
    env = {**os.environ}
    out = subprocess.run(
        [sys.executable, "-m", "bidopt.jobs.optimize", "--once", "--no-ray"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert f"run {run_id} completed" in out.stdout
    helped = subprocess.run(
        [sys.executable, "-m", "bidopt.jobs.optimize", "--help"], capture_output=True, text=True, timeout=60
    )
    assert "--once" in helped.stdout and "python -m bidopt.jobs.optimize" in helped.stdout
