"""Completed runs with small but real artifacts, for tests that deploy splits without training:
``set_traffic_split`` only switches to runs a bidder can load."""

from __future__ import annotations

from sqlalchemy import select, update

from bidopt.artifacts import write_run_artifacts
from bidopt.db import queries as q
from bidopt.db.engine import session_scope
from bidopt.db.models import OptFeatureMacro, OptRun, utcnow
from bidopt.settings import get_settings

BIDS_CSV = b"segment_key,bid_cpm\n*,1.5\ncalifornia,2.5\n"
MULTIPLIERS_CSV = b"domain,multiplier\n"


def complete_servable(engine, run_id: str, validation: str = "passed", *, bids_csv: bytes = BIDS_CSV) -> str:
    """Mark ``run_id`` completed with a one-feature bid table (geo, pinned to its macro's field) in
    the artifact store; returns its output URL."""
    url = f"{get_settings().artifact_url.rstrip('/')}/test-runs/{run_id}"
    write_run_artifacts(
        url, {"suggested_bids.csv": bids_csv, "domain_multipliers.csv": MULTIPLIERS_CSV}, meta={"run_id": run_id}
    )
    with session_scope(engine) as s:
        macro = s.scalar(select(OptFeatureMacro).where(OptFeatureMacro.feature_name == "geo_region_name"))
        q.record_run_features(
            s, run_id, [q.FeatureRecord("geo_region_name", 1, True, 50.0, macro.macro_id, macro.request_field)]
        )
        s.execute(
            update(OptRun)
            .where(OptRun.run_id == run_id)
            .values(
                status="completed",
                completed_at=utcnow(),
                s3_output_path=url,
                validation_status=validation,
                validation_details="[]",
                segments_count=1,
                bid_median=2.5,
                bid_min=1.5,
                bid_max=2.5,
            )
        )
    return url
