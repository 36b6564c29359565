"""The demo catalogue: one exchange, its macros, one optimizer version and two entities, made with
the catalogue's service functions (``bidopt.catalogue``), as an admin would with the CLI.

Idempotent: seeding twice changes nothing.
"""

from __future__ import annotations

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from bidopt.db.models import OptEntity, OptMaster, OptVersion

# feature_name -> (macro template, bid-request field it stands for, description)
ADX_MACROS = {
    "geo_region_name": ("[ADX_GEO_STATE]", "device.geo.region", "Region / state of the device"),
    "os_code": ("[ADX_USER_OS]", "device.os", "Operating system"),
    "browser_code": ("[ADX_USER_BROWSER]", "device.ua", "Browser family parsed from the user agent"),
    "device_type": ("[ADX_DEVICE_TYPE]", "device.devicetype", "OpenRTB device type"),
    "domain": ("[ADX_DOMAIN]", "site.domain|app.bundle", "Site domain, or app bundle in apps"),
    "npi_matched": ("[ADX_NPI_MATCH]", "user.ext.npi_matched", "The user matched the buyer's NPI (prescriber) list"),
}

DEMO_ENTITIES = {
    # entity_code: (name, static configs)
    "drugs_hcp": (
        "Pharma brand, health-care professionals",
        {"floor_available": False, "npi_enabled": True, "domain_enabled": True},
    ),
    "auto_intenders": (
        "Car brand, in-market audience",
        {"floor_available": True, "npi_enabled": False, "domain_enabled": False},
    ),
}


DEMO_ACTOR = "seed-demo"


def seed_demo_catalogue(session: Session) -> list[str]:
    """Add what is missing of the demo catalogue, through the same service functions an admin uses
    (``bidopt.catalogue``: the same checks, and audit rows by ``seed-demo``); returns what was added."""
    from bidopt import catalogue

    added: list[str] = []
    if session.scalar(select(OptMaster).where(OptMaster.source_code == "ADX")) is None:
        catalogue.create_source(
            session,
            code="ADX",
            name="Google Ad Exchange",
            source_type="exchange",
            auction_type="first_price",
            macro_namespace="ADX",
            actor=DEMO_ACTOR,
        )
        added.append("supply source ADX")
    existing = {m["feature_name"] for m in catalogue.list_macros(session, source="ADX")}
    for feature, (template, field, description) in ADX_MACROS.items():
        if feature not in existing:
            catalogue.create_macro(
                session,
                source="ADX",
                feature=feature,
                template=template,
                request_field=field,
                description=description,
                actor=DEMO_ACTOR,
            )
            added.append(f"macro {template}")
    if session.scalar(select(OptVersion).where(OptVersion.version_name == "v1")) is None:
        catalogue.create_version(
            session,
            name="v1",
            anchor_feature="geo_region_name",
            description="XGBoost win-rate + CTR models, geo anchor",
            min_win_auc=0.55,
            max_win_ece=0.05,
            min_bid_coverage=0.95,
            actor=DEMO_ACTOR,
        )
        added.append("optimizer version v1")
    for code, (name, configs) in DEMO_ENTITIES.items():
        if session.scalar(select(OptEntity).where(OptEntity.entity_code == code)) is None:
            catalogue.create_entity(
                session, code=code, name=name, source="ADX", version="v1", configs=configs, actor=DEMO_ACTOR
            )
            added.append(f"entity {code}")
    session.flush()
    return added


def prepare_demo_database(url: str) -> Engine:
    """Migrate the database at ``url`` to the latest schema and add the demo catalogue;
    returns the process-wide engine (what ``bidopt db upgrade && bidopt db seed-demo`` do)."""
    from bidopt.db.engine import get_engine, session_scope
    from bidopt.db.migrate import upgrade_database

    upgrade_database(url)
    engine = get_engine(url)
    with session_scope(engine) as s:
        seed_demo_catalogue(s)
    return engine
