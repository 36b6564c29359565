"""Catalogue administration: supply sources, feature macros, optimizer versions and entities.

The service functions the CLI (``bidopt sources|macros|versions|entities|audit``), the management
API and the web UI call; ``bidopt db seed-demo`` builds the demo catalogue with them too. Each takes
a session and refuses a change before the caller commits (a bad value raises ``InvalidConfig``, an
unknown name ``NotFound``, a rule a change would break ``Conflict``, also when a concurrent writer
took a name first), so a refused change leaves nothing; and writes one audit row per change in the
same transaction (``bidopt.db.audit``), with the caller as ``actor``. Writes that check other rows
lock the supply source's row, as the deactivations do, so two admins cannot together make what
neither could alone (an entity on a deactivated source, an anchor without a macro) on PostgreSQL;
SQLite takes its write lock at the first statement.

The rules, and why:

* Codes use safe characters (entity codes the warehouse's ``ENTITY_CODE_RE``: they name tables,
  folders and URL paths).
* A macro's feature is a bid-log contract column and its request field a dotted path into an
  OpenRTB ``BidRequest`` object (``device.geo.region``, ``site.domain|app.bundle``): anything else
  could never be read, by the optimizer or by the bidder.
* An entity's version anchors on a feature its supply source has an active macro for, checked when
  the entity is made or switched: the optimizer cannot build an anchor it cannot read.
* Deactivating a macro is refused while it is the anchor of an active entity of its source (that
  entity's next run would have no anchor). Runs already in a split are safe: each pinned its request
  fields when it was trained (``opt_run_features.request_field``), so the bidder never reads the
  macro again; the answer says so.
* Versions are immutable: there is no update. A change of threshold or anchor is a new version,
  so a finished run's version always says what it was validated against.
* A version anchors on a segment feature (not ``domain``, priced by multipliers), and on
  ``npi_matched`` only for entities with ``npi_enabled``.
* Deactivating an entity keeps its history; the bidder stops serving it at its next refresh and new
  runs are refused (``queries.create_run``); runs already pending still run (cancel them apart).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from bidopt.configs import ConfigSpec
from bidopt.db import audit
from bidopt.db import queries as q
from bidopt.db.models import (
    AUCTION_TYPES,
    SOURCE_TYPES,
    OptEntity,
    OptFeatureMacro,
    OptMaster,
    OptRun,
    OptVersion,
)
from bidopt.errors import Conflict, InvalidConfig, NotFound
from bidopt.views import entity_view, format_ts
from bidopt.warehouse.base import ENTITY_CODE_RE
from bidopt.warehouse.contract import FEATURE_COLUMNS

SOURCE_CODE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
NAMESPACE_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,31}$")
TEMPLATE_RE = re.compile(r"^\[[A-Z][A-Z0-9_]{0,97}\]$")
VERSION_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
FIELD_PATH_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z_][A-Za-z0-9_]{0,63})*$")
# The objects of an OpenRTB 2.6 BidRequest a segment feature can be read from (imp fields are
# per impression, read by the bidder apart: floor_bucket)
REQUEST_OBJECTS = ("site", "app", "device", "user", "regs", "source", "ext", "dooh")
# What a version may anchor on: a segment feature of the optimizer (bidopt.optimizer.pipeline's
# candidate_features): domain is priced by multipliers, never a segment; npi_matched only where the
# entity has npi_enabled (checked per entity)
ANCHOR_FEATURES = tuple(f for f in FEATURE_COLUMNS if f != "domain")
BASE_PATH_RE = re.compile(r"^(s3://[a-z0-9][a-z0-9.-]{1,62}/|file:///)?[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*/?$")
MAX_FIELD_CHARS = 200
MAX_NAME_CHARS = 200
MAX_DESCRIPTION_CHARS = 2000

THRESHOLDS = {
    "min_win_auc": ConfigSpec("min_win_auc", "float", "version", None, "Lowest win-model AUC a run may have", 0.5, 1.0),
    "max_win_ece": ConfigSpec(
        "max_win_ece", "float", "version", None, "Highest win-model calibration error", 0.0, 1.0, False
    ),
    "min_bid_coverage": ConfigSpec(
        "min_bid_coverage", "float", "version", None, "Lowest share of traffic with a segment bid", 0.0, 1.0
    ),
}


# ----------------------------------------------------------------------------- checks


def _text(value: Any, what: str, *, max_chars: int = MAX_NAME_CHARS, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise InvalidConfig(f"{what} must be a non-empty text")
    value = value.strip()
    if len(value) > max_chars:
        raise InvalidConfig(f"{what} is {len(value)} characters long; at most {max_chars} are accepted")
    if any(ord(c) < 32 and c not in "\n\t" or ord(c) == 127 for c in value):
        raise InvalidConfig(f"{what} contains control characters")  # PostgreSQL refuses NUL in text
    return value or None


def _key(value: Any) -> Any:
    """A name to look up as given, or a value no row has (a NUL or a non-text would reach the
    database as an error, not as "unknown")."""
    return value if isinstance(value, str) and value.isprintable() and len(value) <= 200 else None


def _insert(session: Session, row: Any, taken: str) -> None:
    """Add ``row`` under a savepoint: a concurrent writer that took the same unique name between our
    check and our insert makes this a Conflict, not a database error."""
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        raise Conflict(taken) from None


def _taken_ignoring_case(session: Session, column, value: str):
    """An existing name equal to ``value`` but for case (``adx`` beside ``ADX`` would be told apart by
    the database and by nobody else)."""
    return session.scalar(select(column).where(func.lower(column) == value.lower()))


def _matching(value: Any, pattern: re.Pattern, what: str, rule: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        shown = repr(value) if not isinstance(value, str) or len(value) <= 40 else repr(value[:40] + "...")
        raise InvalidConfig(f"{what} must be {rule}, got {shown}")
    return value


def _choice(value: Any, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise InvalidConfig(f"{what} must be one of {', '.join(choices)}, got {value!r}"[:300])
    return value


def _feature(value: Any, what: str = "feature") -> str:
    return _choice(value, FEATURE_COLUMNS, what)


def check_request_field(value: Any) -> str:
    """``device.geo.region`` or alternatives ``site.domain|app.bundle``: dotted paths from an OpenRTB
    BidRequest object, at most ``MAX_FIELD_CHARS``."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidConfig("request field must be a dotted path such as device.geo.region")
    if len(value) > MAX_FIELD_CHARS:
        raise InvalidConfig(f"request field is {len(value)} characters long; at most {MAX_FIELD_CHARS}")
    paths = [p.strip() for p in value.split("|")]
    for path in paths:
        if not FIELD_PATH_RE.fullmatch(path):
            raise InvalidConfig(
                f"request field {path!r} is not a dotted path (letters, digits, _ between dots, e.g. device.geo.region)"
            )
        if path.split(".")[0] not in REQUEST_OBJECTS:
            raise InvalidConfig(
                f"request field {path} must start at a bid request object: {', '.join(REQUEST_OBJECTS)}"
            )
    if len(set(paths)) != len(paths):
        raise InvalidConfig(f"request field {value} names a path twice")
    return "|".join(paths)


def _base_path(value: Any) -> str:
    """Where an entity's artifacts go: a relative path under the artifact store (``drugs_hcp``,
    ``pharma/drugs_hcp``), or an absolute ``s3://bucket/...`` or ``file:///...`` URL; no ``..``."""
    value = _text(value, "base path", max_chars=500)
    if not BASE_PATH_RE.fullmatch(value) or any(part == ".." for part in value.split("/")):
        raise InvalidConfig(
            f"base path must be a relative path of letters, digits, _, . and - (or an s3:// or file:/// URL), "
            f"without .., got {value[:60]!r}"
        )
    return value


def _changes(changes: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(changes, dict) or not changes:
        raise InvalidConfig(f"give at least one of: {', '.join(allowed)}")
    unknown = sorted(set(changes) - set(allowed))
    if unknown:
        raise InvalidConfig(f"cannot change {', '.join(map(str, unknown))[:200]}; can change: {', '.join(allowed)}")
    return changes


# ----------------------------------------------------------------------------- lookups


def _one(session: Session, model, column, value: Any, missing: str, *, for_update: bool = False):
    """The row of ``model`` whose ``column`` is ``value`` (locked with ``for_update``), else NotFound."""
    stmt = select(model).where(column == _key(value))
    row = session.scalar(stmt.with_for_update() if for_update else stmt)
    if row is None:
        raise NotFound(f"{missing}: {value}"[:200])
    return row


def _source(session: Session, code: Any, *, for_update: bool = False) -> OptMaster:
    return _one(session, OptMaster, OptMaster.source_code, code, "unknown supply source", for_update=for_update)


def _macro(session: Session, source: OptMaster, feature: Any) -> OptFeatureMacro:
    macro = session.scalar(
        select(OptFeatureMacro).where(
            OptFeatureMacro.master_id == source.master_id, OptFeatureMacro.feature_name == _key(feature)
        )
    )
    if macro is None:
        raise NotFound(f"supply source {source.source_code} has no macro for {feature}"[:200])
    return macro


def _version(session: Session, name: Any) -> OptVersion:
    return _one(session, OptVersion, OptVersion.version_name, name, "unknown optimizer version")


def _entity(session: Session, code: Any, *, for_update: bool = False) -> OptEntity:
    return _one(session, OptEntity, OptEntity.entity_code, code, "unknown entity", for_update=for_update)


def _active_macro(session: Session, source: OptMaster, feature: str) -> OptFeatureMacro | None:
    return session.scalar(
        select(OptFeatureMacro).where(
            OptFeatureMacro.master_id == source.master_id,
            OptFeatureMacro.feature_name == feature,
            OptFeatureMacro.status == "A",
        )
    )


def _check_anchor_readable(
    session: Session, source: OptMaster, version: OptVersion, static: dict[str, Any] | None = None
) -> None:
    """The optimizer can build the version's anchor for an entity of ``source`` with ``static`` configs."""
    if version.anchor_feature == "npi_matched" and not (static or {}).get("npi_enabled"):
        raise InvalidConfig(
            f"version {version.version_name} anchors on npi_matched, which the optimizer uses only with "
            f"npi_enabled=true"
        )
    if _active_macro(session, source, version.anchor_feature) is None:
        raise InvalidConfig(
            f"version {version.version_name} anchors on {version.anchor_feature}, but supply source "
            f"{source.source_code} has no active macro for it: add one first (bidopt macros create)"
        )


# ----------------------------------------------------------------------------- views


def source_view(session: Session, source: OptMaster) -> dict[str, Any]:
    entities = session.scalars(
        select(OptEntity.entity_code).where(OptEntity.master_id == source.master_id).order_by(OptEntity.entity_code)
    )
    return {
        "source_code": source.source_code,
        "name": source.name,
        "source_type": source.source_type,
        "auction_type": source.auction_type,
        "macro_namespace": source.macro_namespace,
        "is_active": source.is_active,
        "created_at": format_ts(source.created_at),
        "entities": list(entities),
    }


def macro_view(macro: OptFeatureMacro, source: OptMaster) -> dict[str, Any]:
    return {
        "source_code": source.source_code,
        "feature_name": macro.feature_name,
        "macro_template": macro.macro_template,
        "request_field": macro.request_field,
        "status": "active" if macro.status == "A" else "inactive",
        "description": macro.description,
    }


def version_view(session: Session, version: OptVersion) -> dict[str, Any]:
    runs = session.scalar(select(func.count()).select_from(OptRun).where(OptRun.version_id == version.version_id))
    entities = session.scalars(
        select(OptEntity.entity_code)
        .where(OptEntity.current_version_id == version.version_id)
        .order_by(OptEntity.entity_code)
    )
    return {
        "version_name": version.version_name,
        "description": version.description,
        "anchor_feature": version.anchor_feature,
        "min_win_auc": version.min_win_auc,
        "max_win_ece": version.max_win_ece,
        "min_bid_coverage": version.min_bid_coverage,
        "created_at": format_ts(version.created_at),
        "runs": int(runs or 0),
        "entities": list(entities),
    }


def _source_fields(view: dict[str, Any]) -> dict[str, Any]:
    return {k: view[k] for k in ("name", "source_type", "auction_type", "macro_namespace", "is_active")}


def _macro_fields(view: dict[str, Any]) -> dict[str, Any]:
    return {k: view[k] for k in ("macro_template", "request_field", "status", "description")}


def _entity_fields(view: dict[str, Any]) -> dict[str, Any]:
    keys = ("name", "supply_source", "current_version", "base_path", "is_active")
    return {k: view[k] for k in keys}


# ----------------------------------------------------------------------------- sources


def create_source(
    session: Session, *, code: Any, name: Any, source_type: Any, auction_type: Any, macro_namespace: Any, actor: str
) -> dict[str, Any]:
    code = _matching(code, SOURCE_CODE_RE, "source code", "1 to 64 letters, digits, _ or -")
    source = OptMaster(
        source_code=code,
        name=_text(name, "name"),
        source_type=_choice(source_type, SOURCE_TYPES, "source type"),
        auction_type=_choice(auction_type, AUCTION_TYPES, "auction type"),
        macro_namespace=_matching(macro_namespace, NAMESPACE_RE, "macro namespace", "upper-case letters, digits, _"),
        is_active=True,
    )
    existing = _taken_ignoring_case(session, OptMaster.source_code, code)
    if existing is not None:
        raise Conflict(f"supply source {existing} exists already")
    _insert(session, source, f"supply source {code} exists already")
    view = source_view(session, source)
    audit.record_change(
        session, actor=actor, action="source.create", object_type="source", object_key=code, new=_source_fields(view)
    )
    return view


def list_sources(session: Session) -> list[dict[str, Any]]:
    return [source_view(session, m) for m in session.scalars(select(OptMaster).order_by(OptMaster.source_code))]


def get_source(session: Session, code: Any) -> dict[str, Any]:
    source = _source(session, code)
    return {**source_view(session, source), "macros": list_macros(session, source=code)}


def update_source(session: Session, code: Any, changes: Any, *, actor: str) -> dict[str, Any]:
    changes = _changes(changes, ("name", "source_type", "auction_type", "macro_namespace"))
    source = _source(session, code, for_update=True)
    before = source_view(session, source)
    if "name" in changes:
        source.name = _text(changes["name"], "name")
    if "source_type" in changes:
        source.source_type = _choice(changes["source_type"], SOURCE_TYPES, "source type")
    if "auction_type" in changes:
        source.auction_type = _choice(changes["auction_type"], AUCTION_TYPES, "auction type")
    if "macro_namespace" in changes:
        namespace = _matching(
            changes["macro_namespace"], NAMESPACE_RE, "macro namespace", "upper-case letters, digits, _"
        )
        clashing = [
            m.macro_template
            for m in session.scalars(select(OptFeatureMacro).where(OptFeatureMacro.master_id == source.master_id))
            if not m.macro_template.startswith(f"[{namespace}_")
        ]
        if clashing:
            raise Conflict(
                f"macros of {source.source_code} use another namespace ({', '.join(clashing[:5])}): "
                f"change their templates first"
            )
        source.macro_namespace = namespace
    session.flush()
    after = source_view(session, source)
    old, new = audit.changed_fields(_source_fields(before), _source_fields(after))
    if new:
        audit.record_change(
            session,
            actor=actor,
            action="source.update",
            object_type="source",
            object_key=source.source_code,
            old=old,
            new=new,
        )
    return after


def deactivate_source(session: Session, code: Any, *, actor: str) -> dict[str, Any]:
    source = _source(session, code, for_update=True)
    users = list(
        session.scalars(
            select(OptEntity.entity_code)
            .where(OptEntity.master_id == source.master_id, OptEntity.is_active.is_(True))
            .order_by(OptEntity.entity_code)
        )
    )
    if users:
        raise Conflict(f"supply source {source.source_code} is used by active entities: {', '.join(users[:10])}")
    if source.is_active:
        source.is_active = False
        session.flush()
        audit.record_change(
            session,
            actor=actor,
            action="source.deactivate",
            object_type="source",
            object_key=source.source_code,
            old={"is_active": True},
            new={"is_active": False},
        )
    return source_view(session, source)


# ----------------------------------------------------------------------------- macros


def _check_template(source: OptMaster, template: Any) -> str:
    template = _matching(template, TEMPLATE_RE, "macro template", "[UPPER_CASE] in brackets, e.g. [ADX_GEO_STATE]")
    if not template.startswith(f"[{source.macro_namespace}_") or template == f"[{source.macro_namespace}_]":
        raise InvalidConfig(
            f"macro template {template} must be in supply source {source.source_code}'s namespace: "
            f"[{source.macro_namespace}_...]"
        )
    return template


def create_macro(
    session: Session,
    *,
    source: Any,
    feature: Any,
    template: Any,
    request_field: Any,
    description: Any = None,
    actor: str,
) -> dict[str, Any]:
    master = _source(session, source, for_update=True)
    feature = _feature(feature)
    macro = OptFeatureMacro(
        master_id=master.master_id,
        feature_name=feature,
        macro_template=_check_template(master, template),
        request_field=check_request_field(request_field),
        status="A",
        description=_text(description, "description", max_chars=MAX_DESCRIPTION_CHARS, required=False),
    )
    existing = session.scalar(
        select(OptFeatureMacro).where(
            OptFeatureMacro.master_id == master.master_id, OptFeatureMacro.feature_name == _key(feature)
        )
    )
    if existing is not None:
        raise Conflict(
            f"supply source {master.source_code} has a macro for {feature} already ({existing.macro_template}): "
            f"update it instead"
        )
    _insert(session, macro, f"supply source {master.source_code} has a macro for {feature} already")
    view = macro_view(macro, master)
    audit.record_change(
        session,
        actor=actor,
        action="macro.create",
        object_type="macro",
        object_key=f"{master.source_code}/{feature}",
        new=_macro_fields(view),
    )
    return view


def list_macros(session: Session, *, source: Any = None) -> list[dict[str, Any]]:
    stmt = select(OptFeatureMacro, OptMaster).join(OptMaster, OptFeatureMacro.master_id == OptMaster.master_id)
    if source is not None:
        stmt = stmt.where(OptMaster.source_code == _source(session, source).source_code)
    stmt = stmt.order_by(OptMaster.source_code, OptFeatureMacro.feature_name)
    return [macro_view(m, s) for m, s in session.execute(stmt).all()]


def _anchored_entities(session: Session, master: OptMaster, feature: str) -> list[str]:
    return list(
        session.scalars(
            select(OptEntity.entity_code)
            .join(OptVersion, OptEntity.current_version_id == OptVersion.version_id)
            .where(
                OptEntity.master_id == master.master_id,
                OptEntity.is_active.is_(True),
                OptVersion.anchor_feature == feature,
            )
            .order_by(OptEntity.entity_code)
        )
    )


def update_macro(session: Session, source: Any, feature: Any, changes: Any, *, actor: str) -> dict[str, Any]:
    changes = _changes(changes, ("template", "request_field", "description", "status"))
    if "status" in changes and len(changes) > 1:
        raise InvalidConfig("change a macro's status on its own, not with other fields")
    master = _source(session, source, for_update=True)
    macro = _macro(session, master, feature)
    before = macro_view(macro, master)
    if "template" in changes:
        macro.macro_template = _check_template(master, changes["template"])
    if "request_field" in changes:
        macro.request_field = check_request_field(changes["request_field"])
    if "description" in changes:
        macro.description = _text(
            changes["description"], "description", max_chars=MAX_DESCRIPTION_CHARS, required=False
        )
    if "status" in changes:
        status = _choice(changes["status"], ("active", "inactive"), "status")
        if status == "inactive":
            return deactivate_macro(session, source, feature, actor=actor)  # with its checks and note
        macro.status = "A"
    session.flush()
    after = macro_view(macro, master)
    old, new = audit.changed_fields(_macro_fields(before), _macro_fields(after))
    if new:
        audit.record_change(
            session,
            actor=actor,
            action="macro.update",
            object_type="macro",
            object_key=f"{master.source_code}/{macro.feature_name}",
            old=old,
            new=new,
        )
    # a changed request field reaches new runs only: finished runs pinned theirs
    if "request_field" in new:
        after["note"] = "runs trained before keep reading the request field they were trained with"
    return after


def deactivate_macro(session: Session, source: Any, feature: Any, *, actor: str) -> dict[str, Any]:
    master = _source(session, source, for_update=True)
    macro = _macro(session, master, feature)
    anchored = _anchored_entities(session, master, macro.feature_name)
    if anchored and macro.status == "A":
        raise Conflict(
            f"{macro.feature_name} is the anchor feature of active entities of {master.source_code} "
            f"({', '.join(anchored[:10])}): their next runs could not build it; switch them to another "
            f"version first"
        )
    if macro.status == "A":
        macro.status = "I"
        session.flush()
        audit.record_change(
            session,
            actor=actor,
            action="macro.deactivate",
            object_type="macro",
            object_key=f"{master.source_code}/{macro.feature_name}",
            old={"status": "active"},
            new={"status": "inactive"},
        )
    view = macro_view(macro, master)
    view["note"] = (
        "runs already trained, in a split or not, keep reading the request field they pinned when trained; "
        "runs from now on do not use this feature"
    )
    return view


# ----------------------------------------------------------------------------- versions


def create_version(
    session: Session,
    *,
    name: Any,
    anchor_feature: Any,
    min_win_auc: Any,
    max_win_ece: Any,
    min_bid_coverage: Any,
    description: Any = None,
    actor: str,
) -> dict[str, Any]:
    name = _matching(name, VERSION_NAME_RE, "version name", "1 to 64 letters, digits, _, . or -")
    version = OptVersion(
        version_name=name,
        description=_text(description, "description", max_chars=MAX_DESCRIPTION_CHARS, required=False),
        anchor_feature=_choice(anchor_feature, ANCHOR_FEATURES, "anchor feature"),
        min_win_auc=THRESHOLDS["min_win_auc"].parse(min_win_auc),
        max_win_ece=THRESHOLDS["max_win_ece"].parse(max_win_ece),
        min_bid_coverage=THRESHOLDS["min_bid_coverage"].parse(min_bid_coverage),
    )
    taken = f"version {name} exists already; versions never change: give the new one another name"
    existing = _taken_ignoring_case(session, OptVersion.version_name, name)
    if existing is not None:
        raise Conflict(taken.replace(name, existing, 1))
    _insert(session, version, taken)
    view = version_view(session, version)
    audit.record_change(
        session,
        actor=actor,
        action="version.create",
        object_type="version",
        object_key=name,
        new={k: view[k] for k in ("anchor_feature", "min_win_auc", "max_win_ece", "min_bid_coverage", "description")},
    )
    return view


def list_versions(session: Session) -> list[dict[str, Any]]:
    """Oldest first (``v10`` after ``v9``, not after ``v1``)."""
    stmt = select(OptVersion).order_by(OptVersion.created_at, OptVersion.version_id)
    return [version_view(session, v) for v in session.scalars(stmt)]


def get_version(session: Session, name: Any) -> dict[str, Any]:
    return version_view(session, _version(session, name))


# ----------------------------------------------------------------------------- entities


def _record_entity(session: Session, entity: OptEntity, action: str, *, old: Any, new: Any, actor: str) -> None:
    audit.record_change(
        session,
        actor=actor,
        action=action,
        object_type="entity",
        object_key=entity.entity_code,
        entity_code=entity.entity_code,
        old=old,
        new=new,
    )


def create_entity(
    session: Session,
    *,
    code: Any,
    name: Any,
    source: Any,
    version: Any,
    base_path: Any = None,
    configs: Any = None,
    actor: str,
) -> dict[str, Any]:
    code = _matching(
        code, ENTITY_CODE_RE, "entity code", "1 to 64 of a-z, 0-9, _ or -, starting with a letter or digit"
    )
    # the source row locked: a concurrent deactivation of the source or of the anchor's macro (both
    # lock it) waits for this entity, or this waits and sees what it did
    master = _source(session, source, for_update=True)
    if not master.is_active:
        raise Conflict(f"supply source {master.source_code} is inactive")
    chosen = _version(session, version)
    if configs is not None and not isinstance(configs, dict):
        raise InvalidConfig("static configs must be key=value pairs")
    if session.scalar(select(OptEntity.entity_id).where(OptEntity.entity_code == code)) is not None:
        raise Conflict(f"entity {code} exists already")
    entity = OptEntity(
        entity_code=code,
        name=_text(name, "name"),
        master_id=master.master_id,
        current_version_id=chosen.version_id,
        base_path=_base_path(base_path) if base_path is not None else code,
        is_active=True,
    )
    _insert(session, entity, f"entity {code} exists already")
    for key, value in (configs or {}).items():
        q.set_entity_config(session, entity.entity_id, key, value)
    _check_anchor_readable(session, master, chosen, q.get_entity_configs(session, entity.entity_id))
    session.refresh(entity)
    view = entity_view(session, entity)
    new = {**_entity_fields(view), "static_configs": view["static_configs"]}
    _record_entity(session, entity, "entity.create", old=None, new=new, actor=actor)
    return view


def update_entity(session: Session, code: Any, changes: Any, *, actor: str) -> dict[str, Any]:
    changes = _changes(changes, ("name", "base_path"))
    entity = _entity(session, code, for_update=True)
    before = _entity_fields(entity_view(session, entity))
    if "name" in changes:
        entity.name = _text(changes["name"], "name")
    if "base_path" in changes:
        entity.base_path = _base_path(changes["base_path"])
    session.flush()
    view = entity_view(session, entity)
    old, new = audit.changed_fields(before, _entity_fields(view))
    if new:
        _record_entity(session, entity, "entity.update", old=old, new=new, actor=actor)
    return view


def deactivate_entity(session: Session, code: Any, *, actor: str) -> dict[str, Any]:
    entity = _entity(session, code, for_update=True)
    if entity.is_active:
        entity.is_active = False
        session.flush()
        _record_entity(
            session, entity, "entity.deactivate", old={"is_active": True}, new={"is_active": False}, actor=actor
        )
    return entity_view(session, entity)


def set_entity_configs(session: Session, code: Any, configs: Any, *, actor: str) -> dict[str, Any]:
    """Static configs of an entity (the guardrail settings among them), each parsed and range-checked
    like a run config; all or nothing."""
    if not isinstance(configs, dict) or not configs:
        raise InvalidConfig("give at least one static config as key=value")
    entity = _entity(session, code, for_update=True)
    before = q.get_entity_configs(session, entity.entity_id)
    for key, value in configs.items():
        q.set_entity_config(session, entity.entity_id, key, value)
    after = q.get_entity_configs(session, entity.entity_id)
    if entity.current_version.anchor_feature == "npi_matched" and not after.get("npi_enabled"):
        raise InvalidConfig(
            f"{entity.entity_code}'s version {entity.current_version.version_name} anchors on npi_matched: "
            f"npi_enabled must stay true (switch version first)"
        )
    old, new = audit.changed_fields(before, after)
    if new:
        _record_entity(session, entity, "entity.config", old=old, new=new, actor=actor)
    return entity_view(session, entity)


def use_version(session: Session, code: Any, version: Any, *, actor: str) -> dict[str, Any]:
    entity = _entity(session, code, for_update=True)
    master = _source(session, entity.master.source_code, for_update=True)  # as create_entity: see there
    chosen = _version(session, version)
    _check_anchor_readable(session, master, chosen, q.get_entity_configs(session, entity.entity_id))
    previous = entity.current_version.version_name
    if entity.current_version_id != chosen.version_id:
        entity.current_version_id = chosen.version_id
        session.flush()
        session.refresh(entity)
        _record_entity(
            session,
            entity,
            "entity.use_version",
            old={"current_version": previous},
            new={"current_version": chosen.version_name},
            actor=actor,
        )
    return entity_view(session, entity)


# ----------------------------------------------------------------------------- audit


def audit_view(row) -> dict[str, Any]:
    import json

    return {
        "audit_id": row.audit_id,
        "at": format_ts(row.at),
        "actor": row.actor,
        "action": row.action,
        "object_type": row.object_type,
        "object_key": row.object_key,
        "entity_code": row.entity_code,
        "old": json.loads(row.old_value) if row.old_value else None,
        "new": json.loads(row.new_value) if row.new_value else None,
    }


def list_audit(session: Session, *, entity: Any = None, limit: Any = 200) -> list[dict[str, Any]]:
    """Newest first; only the changes of ``entity`` when given (which must exist)."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= audit.MAX_LIMIT:
        raise InvalidConfig(f"limit must be a whole number from 1 to {audit.MAX_LIMIT}")
    if entity is not None:
        _entity(session, entity)
    return [audit_view(r) for r in audit.list_changes(session, entity_code=entity, limit=limit)]
