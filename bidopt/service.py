"""What operators do, as library functions: the API, the web UI and the CLI all call these.

Each function takes a ``Session`` (the caller owns the transaction, see ``session_scope``) and
returns plain dicts and lists (``bidopt.views``), ready for JSON or a table.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from bidopt import catalogue, guardrails
from bidopt.artifacts import read_run_artifact
from bidopt.configs import ENTITY_CONFIG_SPECS, RUN_CONFIG_SPECS
from bidopt.db import access, bidder_status, schedules
from bidopt.db import queries as q
from bidopt.db.models import OptRun, utcnow
from bidopt.errors import Conflict, InvalidConfig, NotFound, ServiceUnavailable
from bidopt.settings import get_settings
from bidopt.views import (
    deployment_view,
    entity_view,
    format_ts,
    run_detail_view,
    run_row_view,
    schedule_view,
    token_view,
    user_view,
)

MAX_PAGE = 1000


def config_specs() -> dict[str, list[dict[str, Any]]]:
    """Every run and static config key with its section, type, default, range and help."""

    def spec_view(spec) -> dict[str, Any]:
        return {
            "key": spec.key,
            "section": spec.section,
            "value_type": spec.value_type,
            "default": spec.default,
            "description": spec.description,
            "min_value": spec.min_value,
            "max_value": spec.max_value,
            "min_inclusive": spec.min_inclusive,
            "max_inclusive": spec.max_inclusive,
            "choices": list(spec.choices),
        }

    return {
        "run": [spec_view(s) for s in RUN_CONFIG_SPECS.values()],
        "static": [spec_view(s) for s in ENTITY_CONFIG_SPECS.values()],
    }


def list_entities(session: Session) -> list[dict[str, Any]]:
    return [entity_view(session, e) for e in q.list_entities(session)]


def get_entity(session: Session, entity_code: str) -> dict[str, Any]:
    return entity_view(session, q.get_entity_by_code(session, entity_code))


def get_entity_with_latest_runs(session: Session, entity_code: str, *, limit: int = 10) -> dict[str, Any]:
    """The entity's view with its newest runs under ``latest_runs`` (row views, newest first)."""
    view = get_entity(session, entity_code)
    return {**view, "latest_runs": list_runs(session, entity_code=entity_code, limit=limit, with_metrics=False)}


def create_run(
    session: Session, entity_code: str, configs: dict[str, Any], *, triggered_by: str, trigger_type: str = "api"
) -> dict[str, Any]:
    run = q.create_run(session, entity_code, configs, triggered_by=triggered_by, trigger_type=trigger_type)
    return run_detail_view(session, run)


def list_runs(
    session: Session,
    *,
    entity_code: str | None = None,
    status: str | None = None,
    limit: int = 100,
    with_metrics: bool = True,
) -> list[dict[str, Any]]:
    """Runs newest first as row views; ``with_metrics`` adds the model metrics and the error
    (a query per run: the API's list), without them one query (``bidopt runs list``)."""
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidConfig(f"limit must be between 1 and {MAX_PAGE}, got {limit}")
    runs = q.list_runs(session, entity_code=entity_code, status=status, limit=limit)
    if not with_metrics:
        return [run_row_view(r) for r in runs]
    out = []
    for run in runs:
        row = run_row_view(run)
        metrics = q.get_run_metrics(session, run.run_id)
        row["win_auc"] = metrics.get("win_rate_model", {}).get("auc")
        row["win_ece"] = metrics.get("win_rate_model", {}).get("ece")
        row["ctr_auc"] = metrics.get("ctr_model", {}).get("auc")
        row["error_message"] = run.error_message
        out.append(row)
    return out


def get_run(session: Session, run_id: str) -> dict[str, Any]:
    return run_detail_view(session, q.get_run(session, run_id))


def get_newest_run(session: Session, entity_code: str) -> dict[str, Any]:
    """The detail view of the entity's newest run; ``NotFound`` if it has none."""
    newest = q.list_runs(session, entity_code=entity_code, limit=1)
    if not newest:
        raise NotFound(f"{entity_code} has no runs")
    return run_detail_view(session, newest[0])


def _completed_output(session: Session, run_id: str) -> str:
    run = q.get_run(session, run_id)
    if run.status != "completed" or not run.s3_output_path:
        raise Conflict(f"run {run_id} is {run.status}: it has no artifacts")
    return run.s3_output_path


def run_bid_table(
    session: Session, run_id: str, *, offset: int = 0, limit: int = 100, level: str | None = None
) -> dict[str, Any]:
    """A page of the run's ``suggested_bids.csv`` (checked against its manifest)."""
    if offset < 0 or not 1 <= limit <= MAX_PAGE:
        raise InvalidConfig(f"offset must be >= 0 and limit between 1 and {MAX_PAGE}")
    if level not in (None, "segment", "anchor", "default"):
        raise InvalidConfig(f"level must be segment, anchor or default, got {level!r}")
    data = read_run_artifact(_completed_output(session, run_id), "suggested_bids.csv")
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    if level:
        rows = [r for r in rows if r["level"] == level]
    page = rows[offset : offset + limit]
    for r in page:
        for key in ("bid_cpm", "predicted_win_rate"):
            r[key] = float(r[key])
        r["train_bids"] = int(r["train_bids"])
        r["explored"] = r["explored"] == "True"
        r["capped"] = r["capped"] == "True"
    return {"run_id": run_id, "total": len(rows), "offset": offset, "limit": limit, "rows": page}


def run_curves(session: Session, run_id: str) -> dict[str, Any]:
    return json.loads(read_run_artifact(_completed_output(session, run_id), "win_curves.json"))


def deployable_runs(session: Session, entity_code: str) -> list[dict[str, Any]]:
    return [run_row_view(r) for r in q.list_completed_passed_runs(session, entity_code)]


def split_view(session: Session, entity_code: str) -> dict[str, Any]:
    """The entity's active split and, under ``bidders``, whether it is live on every reporting
    bidder replica or which replicas lag and why (``bidopt.db.bidder_status.split_liveness``)."""
    rows = q.get_current_traffic_split(session, entity_code)
    split_id = rows[0].split_id if rows else None
    return {
        "entity_code": entity_code,
        "split_id": split_id,
        "deployed_by": rows[0].deployed_by if rows else None,
        "deployed_at": format_ts(rows[0].deployed_at) if rows else None,
        "reason": rows[0].reason if rows else None,
        "runs": [{"run_id": r.run_id, "traffic_pct": r.traffic_pct} for r in rows],
        "total_pct": sum(r.traffic_pct for r in rows),
        "bidders": bidder_status.split_liveness(session, entity_code, split_id),
    }


def check_split_servable(session: Session, entity_code: str, pairs: list[tuple[str, Any]]) -> None:
    """Raise ``Conflict`` naming the run and the reason if a bidder could not load a run of the
    split, by the bidder's own loading code (manifest, checksums, entity default row, a request
    field for every feature). Runs that are unknown, of another entity, not completed or not
    validated are left to ``replace_traffic_split``, which says so."""
    from bidopt.bidder.loader import check_run_servable  # the bidder's code: imported only when deploying

    entity = q.get_entity_by_code(session, entity_code)
    for run_id, _ in pairs:
        run = session.get(OptRun, run_id)
        if (
            run is None
            or run.entity_id != entity.entity_id
            or run.status != "completed"
            or run.validation_status != "passed"
        ):
            continue
        try:
            check_run_servable(session, run_id)
        except Exception as exc:  # noqa: BLE001 - whatever stops a bidder loading it stops the switch
            reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
            raise Conflict(f"run {run_id} cannot be served: {reason}; the split was not changed") from None


def set_traffic_split(session: Session, entity_code: str, split: Any, *, deployed_by: str) -> dict[str, Any]:
    """Replace the entity's active split (validated; one transaction; see ``replace_traffic_split``),
    after checking that bidders can load every run of it (``check_split_servable``: 409 if not,
    nothing written). A completed run's artifacts never change, so a check that passed still holds
    when the switch commits."""
    if isinstance(split, dict):
        pairs = list(split.items())
    elif isinstance(split, list) and all(isinstance(i, tuple) and len(i) == 2 for i in split):
        pairs = split
    elif isinstance(split, list):
        try:
            pairs = [(item["run_id"], item["traffic_pct"]) for item in split]
        except (TypeError, KeyError):
            raise InvalidConfig("split items need run_id and traffic_pct") from None
    else:
        raise InvalidConfig("split must be {run_id: pct} or [{run_id, traffic_pct}]")
    for run_id, _ in pairs:
        if not isinstance(run_id, str):
            raise InvalidConfig(f"run ids are text, got {run_id!r}")
    pairs = q.validate_split_shape(pairs)  # a malformed split is refused before any artifact is read
    check_split_servable(session, entity_code, pairs)
    q.replace_traffic_split(session, entity_code, pairs, deployed_by=deployed_by)
    return split_view(session, entity_code)


def split_history(session: Session, entity_code: str) -> list[dict[str, Any]]:
    """Past and present splits, newest first, each with its runs."""
    splits: dict[int, dict[str, Any]] = {}
    for row in q.get_traffic_split_history(session, entity_code):
        view = deployment_view(row)
        entry = splits.setdefault(
            row.split_id,
            {
                "split_id": row.split_id,
                "is_active": row.is_active,
                "deployed_by": row.deployed_by,
                "deployed_at": view["deployed_at"],
                "deactivated_at": view["deactivated_at"],
                "reason": view["reason"],
                "runs": [],
            },
        )
        entry["runs"].append({"run_id": row.run_id, "traffic_pct": row.traffic_pct})
    return list(splits.values())


def parse_split_args(items: tuple[str, ...] | list[str]) -> list[tuple[str, str]]:
    """``["RUN_A=80", "RUN_B=20"]`` -> pairs, for the CLI."""
    pairs = []
    for item in items:
        run_id, sep, pct = item.partition("=")
        if not sep or not run_id.strip():
            raise InvalidConfig(f"expected RUN_ID=PERCENT, got {item!r}")
        pairs.append((run_id.strip(), pct.strip()))
    if not pairs:
        raise InvalidConfig("give at least one RUN_ID=PERCENT")
    return pairs


# ----------------------------------------------------------------------------- promotion and guardrails


def set_entity_configs(session: Session, entity_code: str, configs: Any, *, actor: str = "bidopt") -> dict[str, Any]:
    """``bidopt.catalogue.set_entity_configs`` (kept here for its older callers; ``actor`` goes to the
    audit log)."""
    return catalogue.set_entity_configs(session, entity_code, configs, actor=actor)


def promote_run(session: Session, entity_code: str, run_id: Any, *, deployed_by: str) -> dict[str, Any]:
    """Put ``run_id`` at 100% of the entity's traffic, reason "promoted": a completed run of this
    entity that passed validation and that bidders can load (409 otherwise, nothing changes).
    Promoting the run that already has 100% changes nothing. Returns the split view."""
    if not isinstance(run_id, str) or not run_id.strip():
        raise InvalidConfig(f"run_id must be a run id, got {run_id!r}")
    run_id = run_id.strip()
    current = q.get_current_traffic_split(session, entity_code)
    if len(current) == 1 and current[0].run_id == run_id:
        return split_view(session, entity_code)
    pairs = [(run_id, 100)]
    check_split_servable(session, entity_code, pairs)
    q.replace_traffic_split(session, entity_code, pairs, deployed_by=deployed_by, reason="promoted")
    return split_view(session, entity_code)


def _verdict_view(verdict: guardrails.ArmVerdict) -> dict[str, Any]:
    return {
        "arm": verdict.arm,
        "run_id": verdict.run_id,
        "status": verdict.status,
        "note": verdict.note,
        "breaches": [
            {k: getattr(b, k) for k in ("metric", "value", "low", "high", "allowed_low", "allowed_high")}
            for b in verdict.breaches
        ],
    }


def check_guardrails(
    session: Session, entity_code: str | None = None, *, now: Any = None, reports: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Judge every active split (of ``entity_code``, else of every active entity) against its
    entity's guardrail settings (``bidopt.guardrails``) on its A/B report (``split_report``), and
    replace a split with a breaching arm: the arm dropped and the others renormalised, or, when
    every arm breaches, the newest earlier split that is safe restored. The replacement is deployed
    by ``guardrail`` with the breach as its reason, and only if the judged split is still the
    active one (compare-and-set: an operator's change in between wins, reported as ``conflict``).

    Returns one entry per active split looked at: ``entity_code``, ``split_id`` (the judged one),
    ``action`` (``none``, ``drop_arms``, ``restore_previous``, ``no_safe_split``, ``conflict``,
    ``disabled``, ``error``), ``reason``, ``new_split_id`` (when it changed) and the arms'
    verdicts. A report that cannot be built is an ``error`` entry for that entity; database errors
    are raised (the caller's transaction is then rolled back)."""
    if entity_code is not None:
        entities = [q.get_entity_by_code(session, entity_code)]
    else:
        entities = [e for e in q.list_entities(session) if e.is_active]
    results = []
    for entity in entities:
        rows = q.get_current_traffic_split(session, entity.entity_code)
        if not rows:
            continue
        split_id = rows[0].split_id
        entry: dict[str, Any] = {
            "entity_code": entity.entity_code,
            "split_id": split_id,
            "action": guardrails.KEEP,
            "reason": None,
            "new_split_id": None,
            "arms": [],
        }
        results.append(entry)
        settings = guardrails.GuardrailSettings.from_configs(q.get_entity_configs(session, entity.entity_id))
        if not settings.enabled:
            entry["action"] = "disabled"
            continue
        try:
            # a report built beforehand (guardrail_reports, outside this transaction) when there is one;
            # it may be of an older split than the active one: the check below then skips the entity
            report = (reports or {}).get(entity.entity_code)
            if report is None:
                report = split_report(session, entity.entity_code, None)
            elif isinstance(report, Exception):
                raise report
        except (SQLAlchemyError, ServiceUnavailable):
            raise
        except Exception as exc:  # noqa: BLE001 - one entity's unreadable events must not stop the others
            entry.update(action="error", reason=f"no A/B report: {type(exc).__name__}: {exc}".splitlines()[0])
            continue
        if report.get("split_id") != split_id:
            entry.update(action="conflict", reason=f"the report is of split {report.get('split_id')}, not {split_id}")
            continue
        verdicts = guardrails.judge_report(report, settings)
        entry["arms"] = [_verdict_view(v) for v in verdicts]
        plan = _safe_plan(session, entity.entity_code, split_id, rows, verdicts)
        entry.update(action=plan.action, reason=plan.reason or None)
        if not plan.split:
            continue
        try:
            with session.begin_nested():
                new_rows = q.replace_traffic_split(
                    session,
                    entity.entity_code,
                    list(plan.split),
                    deployed_by=guardrails.GUARDRAIL_ACTOR,
                    reason=plan.reason,
                    expected_split_id=split_id,
                    now=now,
                )
            entry["new_split_id"] = new_rows[0].split_id
        except Conflict as exc:
            entry.update(action="conflict", reason=f"{plan.reason}; not applied: {exc}")
    return results


def _safe_plan(
    session: Session, entity_code: str, split_id: int, rows: list, verdicts: list[guardrails.ArmVerdict]
) -> guardrails.Plan:
    """``plan_replacement`` over deployable runs, skipping earlier splits whose runs bidders can no
    longer load (their artifacts gone): the guardrail never deploys a split that cannot serve."""
    active = [(r.run_id, r.traffic_pct) for r in rows]
    history = split_history(session, entity_code)
    deployable = {r.run_id for r in q.list_completed_passed_runs(session, entity_code)}
    while True:
        plan = guardrails.plan_replacement(split_id, active, verdicts, history, deployable)
        if not plan.split:
            return plan
        # the kept arms of a drop are checked too: a run whose artifacts are gone would leave new
        # replicas unable to load the replacement while old ones go on serving the breaching arm
        unservable = set()
        for run_id, pct in plan.split:
            try:
                check_split_servable(session, entity_code, [(run_id, pct)])
            except Conflict:
                unservable.add(run_id)
        if not unservable:
            return plan
        deployable -= unservable


# ----------------------------------------------------------------------------- optimizer schedules


def _parse_start(value: Any) -> datetime | None:
    """An ISO 8601 time (naive = UTC) as naive UTC, or None."""
    if value is None or isinstance(value, datetime):
        return value.astimezone(timezone.utc).replace(tzinfo=None) if value and value.tzinfo else value
    if not isinstance(value, str) or len(value) > 40:
        raise InvalidConfig(f"start must be an ISO 8601 time such as 2026-02-03T06:00:00Z, got {value!r}"[:120])
    try:
        text = value.strip()
        # Python 3.10's fromisoformat does not take a trailing Z (3.11's does)
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "Zz" and text else text)
        return parsed.astimezone(timezone.utc).replace(tzinfo=None) if parsed.tzinfo else parsed
    except (ValueError, OverflowError):  # OverflowError: 0001-01-01 in a zone east of UTC
        raise InvalidConfig(f"start must be an ISO 8601 time such as 2026-02-03T06:00:00Z, got {value!r}") from None


def set_schedule(
    session: Session,
    entity_code: str,
    every_hours: Any,
    configs: Any,
    *,
    created_by: str,
    start_at: Any = None,
) -> dict[str, Any]:
    """Create or replace ENTITY's optimizer schedule: a pending run with ``configs`` (validated like a
    run's, now and again at each run) every ``every_hours`` hours (a minute to a year), the first
    due at ``start_at`` (ISO 8601; default now). The control loop (or ``bidopt schedules tick``)
    creates the runs."""
    if not isinstance(configs, dict):
        raise InvalidConfig("configs must be an object of config values")
    row = schedules.set_schedule(
        session, entity_code, every_hours, configs, created_by=created_by, start_at=_parse_start(start_at)
    )
    return schedule_view(entity_code, row)


def get_schedule(session: Session, entity_code: str) -> dict[str, Any]:
    return schedule_view(entity_code, schedules.get_schedule(session, entity_code))


def list_schedules(session: Session) -> list[dict[str, Any]]:
    return [schedule_view(code, row) for code, row in schedules.list_schedules(session)]


def remove_schedule(session: Session, entity_code: str) -> None:
    """Remove ENTITY's schedule (404 if it has none); the runs it created stay."""
    schedules.remove_schedule(session, entity_code)


def create_due_scheduled_runs(session: Session, *, now: datetime | None = None) -> list[str]:
    """Create the pending runs of every schedule that has come due (``bidopt.db.schedules.create_due_runs``:
    one run per schedule however many slots were missed, never twice for a slot); their run ids."""
    return [r.run_id for r in schedules.create_due_runs(session, now=now) if r.run_id]


# ----------------------------------------------------------------------------- users and API tokens


def add_user(session: Session, username: str, role: str) -> dict[str, Any]:
    return user_view(access.create_user(session, username, role))


def list_users(session: Session) -> list[dict[str, Any]]:
    return [user_view(u) for u in access.list_users(session)]


def create_token(session: Session, username: str, name: str = "default") -> dict[str, Any]:
    """A new API token for ``username``: its view plus ``token``, the value, which is not stored
    (only its hash) and so can be shown only now."""
    row, token = access.create_api_token(session, username, name)
    return {**token_view(row), "token": token}


def list_tokens(session: Session) -> list[dict[str, Any]]:
    """Every token, without its value."""
    return [token_view(t) for t in access.list_api_tokens(session)]


def revoke_token(session: Session, token_id: int) -> None:
    """Revoke a token: it stops working at once."""
    access.revoke_api_token(session, token_id)


# ----------------------------------------------------------------------------- A/B report and compaction

# An hour compacted this long after its attribution window (at least RESEND_SLACK) closed is final
# (no notice can still come, and bidders flush within seconds): compacting again skips it. One
# compacted earlier (``--until`` ahead of the clock) is compacted again, so late events replace it.
FINAL_MARGIN_SECONDS = 300
# Bidder hosts' clocks and their refresh lag: decisions of a split are read from this long before it
# was deployed to this long after it was replaced (filtered by split id, so nothing else counts).
SPLIT_READ_SLACK = 3600


def parse_utc_time(value: Any, name: str = "time") -> datetime:
    """An ISO 8601 time (naive = UTC; ``Z`` or an offset converted) as naive UTC."""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value
    text = value.strip() if isinstance(value, str) else ""
    try:
        if not text or len(text) > 40:
            raise ValueError
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        example = "2026-02-03T06:00:00Z"
        raise InvalidConfig(f"{name} must be an ISO 8601 time such as {example}, got {value!r}"[:160]) from None
    return parsed.astimezone(timezone.utc).replace(tzinfo=None) if parsed.tzinfo else parsed


def _report_split_rows(session: Session, entity_code: str, split_id: Any) -> list:
    history = q.get_traffic_split_history(session, entity_code)
    if split_id is not None and (isinstance(split_id, bool) or not isinstance(split_id, int)):
        raise InvalidConfig(f"split must be a split id (a whole number), got {split_id!r}")
    if not history:
        raise NotFound(f"{entity_code} has had no traffic split")
    if split_id is None:
        active = [r for r in history if r.is_active]
        split_id = (active or history)[0].split_id  # history is newest first
    rows = sorted((r for r in history if r.split_id == split_id), key=lambda r: r.run_id)
    if not rows:
        raise NotFound(f"{entity_code} has no split {split_id}")
    return rows


def split_report(session: Session, entity_code: str, split_id: int | None = None) -> dict[str, Any]:
    """The A/B report of a split (``split_id``; None: the active split, else the newest one) from the
    bidders' events over the split's lifetime (``bidopt.readout``: per-arm results with 95% intervals,
    tests between arms, hourly series). Arms are in run-id order, as bidders number them.
    ``notices_rejected`` is summed over the live bidder replicas' counters (all entities: replicas
    count rejections before they know which entity a forged notice claims).

    ``split_report_inputs`` (the database part) and ``build_split_report`` (the events part) are
    the two halves, for callers that must not read events inside a transaction (on SQLite every
    transaction holds the write lock: the control loop and the report route)."""
    return build_split_report(split_report_inputs(session, entity_code, split_id))


@dataclass(frozen=True)
class SplitReportInputs:
    """What a split's report needs from the database, read in one short transaction."""

    entity_code: str
    header: dict[str, Any]
    arms: tuple
    start: datetime
    decisions_end: datetime | None
    notices_end: datetime | None
    notices_rejected: dict[str, int]


def split_report_inputs(session: Session, entity_code: str, split_id: int | None = None) -> SplitReportInputs:
    from bidopt.readout import ArmSpec

    rows = _report_split_rows(session, entity_code, split_id)
    head = rows[0]
    settings = get_settings()
    arms = tuple(
        ArmSpec(i, r.run_id, r.traffic_pct, q.get_run_configs(session, r.run_id).get("target_win_rate"))
        for i, r in enumerate(rows)
    )
    slack = timedelta(seconds=SPLIT_READ_SLACK)
    ended = head.deactivated_at if not head.is_active else None
    counters = getattr(bidder_status, "notice_counters", None)
    rejected = (counters(session) or {}).get("rejected", {}) if counters else {}
    header = {
        "entity_code": entity_code,
        "split_id": head.split_id,
        "is_active": bool(head.is_active),
        "deployed_by": head.deployed_by,
        "deployed_at": format_ts(head.deployed_at),
        "deactivated_at": format_ts(head.deactivated_at),
        "reason": getattr(head, "reason", None),
    }
    return SplitReportInputs(
        entity_code,
        header,
        arms,
        head.deployed_at - slack,
        ended + slack if ended else None,
        ended + slack + timedelta(seconds=settings.attribution_window_seconds) if ended else None,
        dict(sorted(rejected.items())),
    )


def build_split_report(inputs: SplitReportInputs) -> dict[str, Any]:
    """The report from the events store, with no database access."""
    from bidopt.events.schema import DECISIONS, NOTICES
    from bidopt.events.store import open_event_store
    from bidopt.readout import split_readout

    store = open_event_store(get_settings().events_url)
    decisions = store.read(DECISIONS, inputs.entity_code, inputs.start, inputs.decisions_end)
    notices = store.read(NOTICES, inputs.entity_code, inputs.start, inputs.notices_end)
    body = split_readout(decisions, notices, inputs.header["split_id"], list(inputs.arms))
    return {
        **inputs.header,
        "window": body["window"],
        "test_requests_excluded": body["test_requests_excluded"],
        "duplicates_dropped": body["duplicates_dropped"],
        "orphan_notices": body["orphan_notices"],
        "notices_rejected": inputs.notices_rejected,
        "arms": body["arms"],
        "comparisons": body["comparisons"],
        "hourly": body["hourly"],
    }


def guardrail_reports(engine) -> dict[str, dict[str, Any] | Exception]:
    """The report of every active split of an entity whose guardrails are on, each read from the
    database in a short transaction of its own and built from the events outside any transaction;
    an entity whose report cannot be built maps to the exception (``check_guardrails`` reports it)."""
    from bidopt.db.engine import session_scope

    with session_scope(engine) as s:
        codes = []
        for entity in q.list_entities(s):
            if not entity.is_active or not q.get_current_traffic_split(s, entity.entity_code):
                continue
            if guardrails.GuardrailSettings.from_configs(q.get_entity_configs(s, entity.entity_id)).enabled:
                codes.append(entity.entity_code)
    reports: dict[str, dict[str, Any] | Exception] = {}
    for code in codes:
        with session_scope(engine) as s:
            inputs = split_report_inputs(s, code, None)
        try:
            reports[code] = build_split_report(inputs)
        except Exception as exc:  # noqa: BLE001 - one entity's unreadable events must not stop the others
            reports[code] = exc
    return reports


def _compaction_view(row) -> dict[str, Any]:
    return {
        "hour": format_ts(row.hour_start),
        "decisions": row.decisions,
        "rows_loaded": row.rows_loaded,
        "wins": row.wins,
        "clicks": row.clicks,
        "compacted_at": format_ts(row.compacted_at),
        "compacted_by": row.compacted_by,
    }


def sweep_event_parts(*, older_than_hours: Any = None, now: Any = None) -> dict[str, Any]:
    """Split and delete the mixed event parts bidders left (one killed before its split, a split
    given up or a delete that failed) in the hours that ended ``older_than_hours`` (at least and by
    default 6) before ``now`` (default: now; ISO 8601 UTC), for both kinds of event
    (``EventStore.sweep_mixed_parts``). Younger hours are refused: a writer may still act on them.
    Returns ``{kind: {mixed_parts_deleted, split_parts_written, mixed_parts_kept}}`` and ``ended_by``
    (the hours swept are those that ended by then)."""
    from bidopt.events.schema import EVENT_KINDS
    from bidopt.events.store import SWEEP_AFTER, open_event_store

    minimum = SWEEP_AFTER / timedelta(hours=1)
    hours = minimum if older_than_hours is None else older_than_hours
    if not isinstance(hours, (int, float)) or isinstance(hours, bool) or not minimum <= hours <= 24 * 366:
        raise InvalidConfig(f"older_than_hours must be a number from {minimum:g} to {24 * 366}, got {hours!r}")
    now = utcnow() if now is None else min(parse_utc_time(now, "now"), utcnow())  # never hours still live
    store = open_event_store(get_settings().events_url)
    after = timedelta(hours=hours)
    out: dict[str, Any] = {"ended_by": format_ts(now - after)}
    for kind in EVENT_KINDS:
        out[kind] = store.sweep_mixed_parts(kind, now, after)
    return out


def compact_events(session: Session, entity_code: str, *, until: Any = None, compacted_by: str) -> dict[str, Any]:
    """Load the entity's bidder events into its warehouse as bid-log rows of its own traffic
    (``traffic_source = platform``), one whole hour H at a time once ``H + 1h + max(attribution
    window, RESEND_SLACK) <= until`` (default now; ISO 8601 UTC): each bid of H joined with its
    notices, and each floor no-bid as a bid lost to its floor (``bidopt.events.compact``), test
    requests left out; the decisions are read with ``RESEND_SLACK`` of the neighbouring hours, so a
    resend across the boundary is one row. Each hour replaces that hour's platform rows
    (``replace_platform_hour``), so compacting twice adds nothing, and is recorded in
    ``opt_event_compactions``. Hours already compacted after they became final are skipped.

    Returns ``entity_code``, ``until``, ``hours`` (the hours compacted now, with counts),
    ``rows_loaded``, ``skipped`` (final hours already compacted) and ``waiting`` (hours whose
    attribution window has not passed by ``until``)."""
    from bidopt.data import get_warehouse
    from bidopt.db import compactions
    from bidopt.events.compact import RESEND_SLACK, bid_log_rows, compactable_hours, decisions_read_window
    from bidopt.events.schema import DECISIONS, NOTICES
    from bidopt.events.store import open_event_store

    entity = q.get_entity_by_code(session, entity_code)
    if not compacted_by:
        raise InvalidConfig("compacted_by is required")
    until = utcnow() if until is None else parse_utc_time(until, "until")
    settings = get_settings()
    attribution = timedelta(seconds=settings.attribution_window_seconds)
    store = open_event_store(settings.events_url)
    hours = store.hours(DECISIONS, entity_code)
    # an hour waits for the next hour's first RESEND_SLACK of decisions too (a resend across the boundary)
    waits = max(attribution, RESEND_SLACK)
    ready = compactable_hours(hours, until, waits)
    done = compactions.compactions_by_hour(session, entity.entity_id)
    final_after = timedelta(hours=1) + waits + timedelta(seconds=FINAL_MARGIN_SECONDS)
    compacted, skipped = [], 0
    if ready:
        with get_warehouse() as wh:
            for hour in ready:
                record = done.get(hour)
                if record is not None and record.compacted_at >= hour + final_after:
                    skipped += 1
                    continue
                end = hour + timedelta(hours=1)
                decisions = store.read(DECISIONS, entity_code, *decisions_read_window(hour))
                # a kept decision is at most RESEND_SLACK past the hour; its notices up to the window after it
                notices = store.read(NOTICES, entity_code, hour, end + RESEND_SLACK + attribution)
                rows = bid_log_rows(entity_code, hour, decisions, notices)
                loaded = wh.replace_platform_hour(entity_code, hour, rows.table)
                counts = compactions.HourCounts(rows.decisions, loaded, rows.wins, rows.clicks)
                compactions.record_compaction(session, entity.entity_id, hour, counts, compacted_by=compacted_by)
                compacted.append(
                    {"hour": format_ts(hour), "decisions": rows.decisions, "rows_loaded": loaded}
                    | {"wins": rows.wins, "clicks": rows.clicks}
                )
    return {
        "entity_code": entity_code,
        "until": format_ts(until),
        "hours": compacted,
        "rows_loaded": sum(h["rows_loaded"] for h in compacted),
        "skipped": skipped,
        "waiting": len(hours) - len(ready),
    }


def list_compactions(session: Session, entity_code: str, *, limit: int = 1000) -> list[dict[str, Any]]:
    """The entity's compacted hours, newest first."""
    from bidopt.db import compactions

    if not 1 <= limit <= 100_000:
        raise InvalidConfig(f"limit must be between 1 and 100000, got {limit}")
    entity = q.get_entity_by_code(session, entity_code)
    return [_compaction_view(r) for r in compactions.list_compactions(session, entity.entity_id, limit=limit)]
