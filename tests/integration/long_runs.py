"""Runs that are long only while a test needs them to be.

Fault tests make a run's first attempt long (many boosting rounds) so that it is still working when
the test kills or cancels it. The attempt that then finishes the run would pay the same rounds for
nothing (minutes on 2 cores); ``shorten_run`` rewrites the run's ``xgb_num_rounds`` in the database
after the first attempt read its configs, so only the next attempt is quick. Each attempt reads its
run's configs when it starts (``load_run_spec``), which is what this relies on."""

from __future__ import annotations

from sqlalchemy import update

from bidopt.db.engine import session_scope
from bidopt.db.models import OptRunConfig

QUICK_ROUNDS = 20


def shorten_run(engine, run_id: str, rounds: int = QUICK_ROUNDS) -> None:
    with session_scope(engine) as s:
        changed = s.execute(
            update(OptRunConfig)
            .where(OptRunConfig.run_id == run_id, OptRunConfig.config_key == "xgb_num_rounds")
            .values(config_value=str(rounds))
        ).rowcount
    assert changed == 1, f"run {run_id} has no xgb_num_rounds config to shorten"
