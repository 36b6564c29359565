"""The demo catalogue: one exchange, one optimizer version, two entities and their macros.

Idempotent: seeding twice changes nothing.
"""

from __future__ import annotations

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from bidopt.db.models import OptEntity, OptFeatureMacro, OptMaster, OptVersion
from bidopt.db.queries import set_entity_config

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


def seed_demo_catalogue(session: Session) -> list[str]:
    """Insert what is missing of the demo catalogue; returns what was added, for the CLI."""
    added: list[str] = []
    master = session.scalar(select(OptMaster).where(OptMaster.source_code == "ADX"))
    if master is None:
        master = OptMaster(
            source_code="ADX",
            name="Google Ad Exchange",
            source_type="exchange",
            auction_type="first_price",
            macro_namespace="ADX",
            is_active=True,
        )
        session.add(master)
        session.flush()
        added.append("supply source ADX")
    version = session.scalar(select(OptVersion).where(OptVersion.version_name == "v1"))
    if version is None:
        version = OptVersion(
            version_name="v1",
            anchor_feature="geo_region_name",
            description="XGBoost win-rate + CTR models, geo anchor",
            min_win_auc=0.55,
            max_win_ece=0.05,
            min_bid_coverage=0.95,
        )
        session.add(version)
        session.flush()
        added.append("optimizer version v1")
    existing = {
        m.feature_name
        for m in session.scalars(select(OptFeatureMacro).where(OptFeatureMacro.master_id == master.master_id))
    }
    for feature, (template, field, description) in ADX_MACROS.items():
        if feature not in existing:
            session.add(
                OptFeatureMacro(
                    master_id=master.master_id,
                    feature_name=feature,
                    macro_template=template,
                    request_field=field,
                    status="A",
                    description=description,
                )
            )
            added.append(f"macro {template}")
    for code, (name, configs) in DEMO_ENTITIES.items():
        entity = session.scalar(select(OptEntity).where(OptEntity.entity_code == code))
        if entity is None:
            entity = OptEntity(
                entity_code=code,
                name=name,
                master_id=master.master_id,
                current_version_id=version.version_id,
                base_path=code,
                is_active=True,
            )
            session.add(entity)
            session.flush()
            for key, value in configs.items():
                set_entity_config(session, entity.entity_id, key, value)
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
