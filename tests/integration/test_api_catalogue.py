"""The catalogue through the management API (FastAPI app, in-process): supply sources, macros,
versions, entities and the audit log; the admin role; every rule a clear 4xx that writes nothing."""

import pytest
from fastapi.testclient import TestClient

from bidopt.db import access
from bidopt.db.engine import session_scope
from bidopt.serve.api import create_app

OX = {"code": "OX", "name": "OpenX", "source_type": "ssp", "auction_type": "second_price", "macro_namespace": "OX"}
OX_GEO = {"source": "OX", "feature": "geo_region_name", "template": "[OX_GEO]", "request_field": "device.geo.region"}
V2 = {
    "name": "v2",
    "anchor_feature": "geo_region_name",
    "min_win_auc": "0.6",
    "max_win_ece": 0.04,
    "min_bid_coverage": 0.9,
}
OX_OS = {"source": "OX", "feature": "os_code", "template": "[OX_OS]", "request_field": "device.os"}
NEW = {**OX, "code": "NEW", "macro_namespace": "NEW"}
VET = {"code": "vet_clinics", "name": "Pet health, vets", "source": "OX", "version": "v1"}


@pytest.fixture
def client(platform_db):
    with session_scope(platform_db) as s:
        tokens = {}
        for name, role in (("ada", "admin"), ("olivia", "operator"), ("victor", "viewer")):
            access.create_user(s, name, role)
            tokens[role] = access.create_api_token(s, name)[1]
    c = TestClient(create_app(), raise_server_exceptions=False)
    c.as_admin, c.as_operator, c.as_viewer = (
        {"Authorization": f"Bearer {tokens[r]}"} for r in ("admin", "operator", "viewer")
    )
    return c


def _ok(res, status=200):
    assert res.status_code == status, res.text
    return res.json()


def _audit(client, since=0, **params):
    """The audit rows after ``since`` (an audit id; the demo seed wrote the first ones), newest first."""
    rows = _ok(client.get("/api/audit", headers=client.as_viewer, params={"limit": 1000, **params}))
    return [r for r in rows if r["audit_id"] > since]


def _last_audit_id(client):
    return max((r["audit_id"] for r in _audit(client)), default=0)


def _catalogue(client):
    """Everything a catalogue write could change, as the API reads it."""
    return {
        path: _ok(client.get(path, headers=client.as_viewer))
        for path in ("/api/sources", "/api/macros", "/api/versions", "/api/entities", "/api/audit?limit=1000")
    }


def test_me_says_who_may_change_the_catalogue(client):
    assert _ok(client.get("/api/me", headers=client.as_admin)) == {
        "username": "ada",
        "role": "admin",
        "can_write": True,
        "can_admin": True,
    }
    assert _ok(client.get("/api/me", headers=client.as_operator))["can_admin"] is False
    assert _ok(client.get("/api/me", headers=client.as_viewer))["can_admin"] is False


def test_reads_need_a_token_and_any_role_may_read(client):
    for path in (
        "/api/sources",
        "/api/sources/ADX",
        "/api/macros",
        "/api/macros?source=ADX",
        "/api/versions",
        "/api/versions/v1",
        "/api/audit",
    ):
        assert client.get(path).status_code == 401, path
        _ok(client.get(path, headers=client.as_viewer))
    adx = _ok(client.get("/api/sources/ADX", headers=client.as_viewer))
    assert adx["entities"] == ["auto_intenders", "drugs_hcp"] and adx["is_active"] is True
    assert {m["feature_name"] for m in adx["macros"]} >= {"geo_region_name", "domain"}
    domain = next(m for m in adx["macros"] if m["feature_name"] == "domain")
    assert (domain["macro_template"], domain["request_field"], domain["status"]) == (
        "[ADX_DOMAIN]",
        "site.domain|app.bundle",
        "active",
    )
    v1 = _ok(client.get("/api/versions/v1", headers=client.as_viewer))
    assert (v1["anchor_feature"], v1["min_win_auc"], v1["runs"]) == ("geo_region_name", 0.55, 0)
    assert v1["entities"] == ["auto_intenders", "drugs_hcp"]
    assert client.get("/api/sources/NOPE", headers=client.as_viewer).status_code == 404
    assert client.get("/api/versions/v9", headers=client.as_viewer).status_code == 404
    assert client.get("/api/macros?source=NOPE", headers=client.as_viewer).status_code == 404


def test_an_admin_onboards_a_source_a_version_and_an_entity(client, platform_db):
    """Every write route once, each recorded in the audit log with the caller as the actor."""
    a = client.as_admin
    seeded = _last_audit_id(client)
    assert _ok(client.post("/api/sources", headers=a, json=OX), 201)["entities"] == []
    assert _ok(client.patch("/api/sources/OX", headers=a, json={"name": "OpenX Exchange"}))["name"] == "OpenX Exchange"
    macro = _ok(client.post("/api/macros", headers=a, json=OX_GEO), 201)
    assert (macro["source_code"], macro["status"], macro["description"]) == ("OX", "active", None)
    _ok(client.post("/api/macros", headers=a, json=OX_OS), 201)
    changed = _ok(
        client.patch(
            "/api/macros/OX/geo_region_name",
            headers=a,
            json={"request_field": "device.geo.region|user.geo.region", "description": "state"},
        )
    )
    assert changed["request_field"] == "device.geo.region|user.geo.region" and changed["description"] == "state"
    assert [m["feature_name"] for m in _ok(client.get("/api/macros?source=OX", headers=a))] == [
        "geo_region_name",
        "os_code",
    ]
    off = _ok(client.post("/api/macros/OX/os_code/deactivate", headers=a))
    assert off["status"] == "inactive" and "pinned" in off["note"]
    assert _ok(client.patch("/api/macros/OX/os_code", headers=a, json={"status": "active"}))["status"] == "active"

    v2 = _ok(client.post("/api/versions", headers=a, json=V2), 201)
    assert (v2["version_name"], v2["min_win_auc"], v2["runs"], v2["entities"]) == ("v2", 0.6, 0, [])
    assert [v["version_name"] for v in _ok(client.get("/api/versions", headers=a))] == ["v1", "v2"]

    body = {**VET, "configs": {"domain_enabled": "true", "guardrail_min_bids": "500"}}
    vet = _ok(client.post("/api/entities", headers=a, json=body), 201)
    assert (vet["supply_source"], vet["auction_type"], vet["current_version"], vet["base_path"]) == (
        "OX",
        "second_price",
        "v1",
        "vet_clinics",
    )
    assert vet["static_configs"]["domain_enabled"] is True and vet["static_configs"]["guardrail_min_bids"] == 500
    assert "vet_clinics" in {e["entity_code"] for e in _ok(client.get("/api/entities", headers=client.as_viewer))}
    assert _ok(client.patch("/api/entities/vet_clinics", headers=a, json={"base_path": "pets/vets"}))["base_path"] == (
        "pets/vets"
    )
    configs = _ok(client.put("/api/entities/vet_clinics/configs", headers=a, json={"configs": {"npi_enabled": True}}))
    assert configs["static_configs"]["npi_enabled"] is True
    assert _ok(client.put("/api/entities/vet_clinics/version", headers=a, json={"version": "v2"}))[
        "current_version"
    ] == ("v2")
    assert _ok(client.get("/api/versions/v2", headers=a))["entities"] == ["vet_clinics"]

    # an operator may run it while it is active, nobody once it is deactivated
    _ok(client.post("/api/entities/vet_clinics/runs", headers=client.as_operator, json={}), 201)
    assert _ok(client.post("/api/entities/vet_clinics/deactivate", headers=a))["is_active"] is False
    refused = client.post("/api/entities/vet_clinics/runs", headers=client.as_operator, json={})
    assert refused.status_code == 409 and "inactive" in refused.json()["error"]
    assert _ok(client.post("/api/sources/OX/deactivate", headers=a))["is_active"] is False

    rows = _audit(client, seeded)
    assert all(r["actor"] == "ada" for r in rows)
    assert [r["action"] for r in rows] == [
        "source.deactivate",
        "entity.deactivate",
        "entity.use_version",
        "entity.config",
        "entity.update",
        "entity.create",
        "version.create",
        "macro.update",
        "macro.deactivate",
        "macro.update",
        "macro.create",
        "macro.create",
        "source.update",
        "source.create",
    ]
    by_action = {r["action"]: r for r in rows}
    assert by_action["source.update"]["old"] == {"name": "OpenX"}
    assert by_action["source.update"]["new"] == {"name": "OpenX Exchange"}
    assert by_action["entity.use_version"]["old"] == {"current_version": "v1"}
    assert by_action["entity.use_version"]["new"] == {"current_version": "v2"}
    assert by_action["entity.config"]["old"] == {"npi_enabled": False}
    assert by_action["entity.config"]["new"] == {"npi_enabled": True}
    entity_rows = _audit(client, entity="vet_clinics")
    assert [r["action"] for r in entity_rows] == [
        "entity.deactivate",
        "entity.use_version",
        "entity.config",
        "entity.update",
        "entity.create",
    ]
    assert {r["entity_code"] for r in entity_rows} == {"vet_clinics"}
    assert [r["audit_id"] for r in _audit(client, limit=3)] == [r["audit_id"] for r in rows[:3]]


def _writes():
    """Every catalogue write, in an order in which each succeeds for an admin."""
    return [
        ("post", "/api/sources", OX, 201),
        ("patch", "/api/sources/OX", {"name": "OpenX Exchange"}, 200),
        ("post", "/api/macros", OX_GEO, 201),
        ("patch", "/api/macros/OX/geo_region_name", {"description": "state"}, 200),
        ("post", "/api/macros", OX_OS, 201),
        ("post", "/api/macros/OX/os_code/deactivate", None, 200),
        ("post", "/api/versions", V2, 201),
        ("post", "/api/entities", VET, 201),
        ("patch", "/api/entities/vet_clinics", {"name": "Vets"}, 200),
        ("put", "/api/entities/vet_clinics/configs", {"configs": {"floor_available": True}}, 200),
        ("put", "/api/entities/vet_clinics/version", {"version": "v2"}, 200),
        ("post", "/api/entities/vet_clinics/deactivate", None, 200),
        ("post", "/api/sources/OX/deactivate", None, 200),
    ]


def test_only_admins_change_the_catalogue(client):
    """Viewers and operators get 403 naming the admin role on every catalogue write and change
    nothing; the same request by an admin succeeds."""
    seeded = _last_audit_id(client)
    for method, path, body, status in _writes():
        kwargs = {} if body is None else {"json": body}
        for who, headers in (("victor", client.as_viewer), ("olivia", client.as_operator)):
            before = _catalogue(client)
            res = client.request(method, path, headers=headers, **kwargs)
            assert res.status_code == 403, (method, path, who, res.text)
            assert res.json()["error"].startswith(who) and "needs the admin role" in res.json()["error"]
            assert _catalogue(client) == before, (method, path, who)
        assert client.request(method, path, **kwargs).status_code == 401
        assert client.request(method, path, headers=client.as_admin, **kwargs).status_code == status, (method, path)
    assert len(_audit(client, seeded)) == len(_writes()) and {r["actor"] for r in _audit(client, seeded)} == {"ada"}
    # operators keep runs (admins too)
    for headers in (client.as_operator, client.as_admin):
        _ok(client.post("/api/entities/drugs_hcp/runs", headers=headers, json={}), 201)


# (method, path, body, status, part of the error)
RULES = [
    # supply sources
    ("post", "/api/sources", {**NEW, "code": "ADX"}, 409, "supply source ADX exists already"),
    ("post", "/api/sources", {**NEW, "code": "O X"}, 422, "source code must be"),
    ("post", "/api/sources", {**NEW, "source_type": "dsp"}, 422, "source type must be one of exchange, ssp"),
    ("post", "/api/sources", {**NEW, "auction_type": "vickrey"}, 422, "auction type must be one of"),
    ("post", "/api/sources", {**NEW, "macro_namespace": "ox"}, 422, "macro namespace must be"),
    ("post", "/api/sources", {**NEW, "name": " "}, 422, "name must be a non-empty text"),
    ("post", "/api/sources", {**NEW, "actor": "mallory"}, 422, "actor"),
    ("patch", "/api/sources/ADX", {}, 422, "give at least one of"),
    ("patch", "/api/sources/ADX", {"source_type": "dsp"}, 422, "source type must be one of"),
    ("patch", "/api/sources/ADX", {"macro_namespace": "GOOG"}, 409, "use another namespace"),
    ("patch", "/api/sources/NOPE", {"name": "x"}, 404, "unknown supply source: NOPE"),
    ("post", "/api/sources/ADX/deactivate", None, 409, "is used by active entities: "),
    ("post", "/api/sources/NOPE/deactivate", None, 404, "unknown supply source"),
    # macros: the request field is a valid path, the template in the source's namespace
    ("post", "/api/macros", {**OX_OS, "request_field": "device..geo"}, 422, "is not a dotted path"),
    ("post", "/api/macros", {**OX_OS, "request_field": "device.geo region"}, 422, "is not a dotted path"),
    ("post", "/api/macros", {**OX_OS, "request_field": "imp.bidfloor"}, 422, "must start at a bid request object"),
    ("post", "/api/macros", {**OX_OS, "request_field": "device.os|"}, 422, "is not a dotted path"),
    ("post", "/api/macros", {**OX_OS, "request_field": "device." + "a" * 250}, 422, "at most 200"),
    ("post", "/api/macros", {**OX_OS, "request_field": "device.os|device.os"}, 422, "names a path twice"),
    ("post", "/api/macros", {**OX_OS, "template": "[ADX_USER_OS]"}, 422, "namespace: [OX_...]"),
    ("post", "/api/macros", {**OX_OS, "template": "OX_GEO"}, 422, "macro template must be"),
    ("post", "/api/macros", {**OX_OS, "feature": "colour"}, 422, "feature must be one of"),
    ("post", "/api/macros", {**OX_GEO, "source": "NOPE"}, 404, "unknown supply source"),
    (
        "post",
        "/api/macros",
        {**OX_GEO, "source": "ADX", "template": "[ADX_GEO]"},
        409,
        "has a macro for geo_region_name",
    ),
    ("patch", "/api/macros/ADX/domain", {"request_field": "site/domain"}, 422, "is not a dotted path"),
    ("patch", "/api/macros/ADX/domain", {"status": "gone"}, 422, "status must be one of active, inactive"),
    ("patch", "/api/macros/ADX/domain", {"colour": "red"}, 422, "colour"),
    ("patch", "/api/macros/ADX/floor_bucket", {"description": "x"}, 404, "has no macro for floor_bucket"),
    # the anchor macro of active entities stays
    ("post", "/api/macros/ADX/geo_region_name/deactivate", None, 409, "anchor feature of active entities of ADX"),
    ("patch", "/api/macros/ADX/geo_region_name", {"status": "inactive"}, 409, "anchor feature"),
    # versions: thresholds parsed like run configs, names unique
    ("post", "/api/versions", {**V2, "name": "v1"}, 409, "version v1 exists already"),
    ("post", "/api/versions", {**V2, "name": "v 2"}, 422, "version name must be"),
    ("post", "/api/versions", {**V2, "anchor_feature": "colour"}, 422, "anchor feature must be one of"),
    ("post", "/api/versions", {**V2, "min_win_auc": "nan"}, 422, "min_win_auc must be a number"),
    ("post", "/api/versions", {**V2, "min_win_auc": "1e400"}, 422, "min_win_auc must be a finite number"),
    ("post", "/api/versions", {**V2, "min_win_auc": "abc"}, 422, "min_win_auc must be a number"),
    ("post", "/api/versions", {**V2, "min_win_auc": 0.4}, 422, "min_win_auc must be >= 0.5"),
    ("post", "/api/versions", {**V2, "max_win_ece": 0}, 422, "max_win_ece must be > 0.0"),
    ("post", "/api/versions", {**V2, "min_bid_coverage": 1.5}, 422, "min_bid_coverage must be <= 1.0"),
    ("post", "/api/versions", {k: v for k, v in V2.items() if k != "max_win_ece"}, 422, "max_win_ece"),
    # entities: the safe-character code, unique, an active source, an anchor the source can read
    ("post", "/api/entities", {**VET, "source": "ADX", "code": "Vet Clinics"}, 422, "entity code must be"),
    ("post", "/api/entities", {**VET, "source": "ADX", "code": "../etc"}, 422, "entity code must be"),
    ("post", "/api/entities", {**VET, "source": "ADX", "code": "drugs_hcp"}, 409, "entity drugs_hcp exists already"),
    ("post", "/api/entities", {**VET, "source": "NOPE"}, 404, "unknown supply source: NOPE"),
    ("post", "/api/entities", {**VET, "version": "v9"}, 404, "unknown optimizer version: v9"),
    ("post", "/api/entities", {**VET, "source": "OLD"}, 409, "supply source OLD is inactive"),
    (
        "post",
        "/api/entities",
        VET,
        422,
        "version v1 anchors on geo_region_name, but supply source OX has no active macro",
    ),
    (
        "post",
        "/api/entities",
        {**VET, "source": "ADX", "configs": {"guardrail_min_bids": 0}},
        422,
        "guardrail_min_bids must be >= 1",
    ),
    ("post", "/api/entities", {**VET, "source": "ADX", "configs": {"colour": "red"}}, 422, "colour"),
    ("post", "/api/entities", {**VET, "source": "ADX", "configs": {"npi_enabled": "maybe"}}, 422, "npi_enabled"),
    ("post", "/api/entities", {**VET, "source": "ADX", "triggered_by": "x"}, 422, "triggered_by"),
    ("patch", "/api/entities/drugs_hcp", {}, 422, "give at least one of: name, base_path"),
    ("patch", "/api/entities/drugs_hcp", {"entity_code": "x"}, 422, "entity_code"),
    ("patch", "/api/entities/nope", {"name": "x"}, 404, "unknown entity: nope"),
    ("put", "/api/entities/drugs_hcp/configs", {"configs": {}}, 422, "give at least one static config"),
    ("put", "/api/entities/drugs_hcp/configs", {"configs": {"guardrail_max_win_rate_gap": 2}}, 422, "must be <= 1.0"),
    (
        "put",
        "/api/entities/drugs_hcp/configs",
        {"configs": {"domain_enabled": False, "lookback_days": 3}},
        422,
        "lookback_days",
    ),
    ("put", "/api/entities/drugs_hcp/configs", {"floor_available": True}, 422, "configs"),
    ("put", "/api/entities/nope/configs", {"configs": {"npi_enabled": True}}, 404, "unknown entity"),
    ("put", "/api/entities/drugs_hcp/version", {"version": "v9"}, 404, "unknown optimizer version: v9"),
    (
        "put",
        "/api/entities/ox_line/version",
        {"version": "v_os"},
        422,
        "version v_os anchors on os_code, but supply source OX",
    ),
    ("post", "/api/entities/nope/deactivate", None, 404, "unknown entity: nope"),
]


def _setup_for_rules(client):
    """OX whose only macro (geo) is inactive, with its inactive entity ox_line on v1; the inactive
    source OLD; the version v_os anchored on os_code, which OX has no macro for."""
    a = client.as_admin
    _ok(client.post("/api/sources", headers=a, json=OX), 201)
    _ok(client.post("/api/macros", headers=a, json=OX_GEO), 201)
    _ok(client.post("/api/entities", headers=a, json={**VET, "code": "ox_line"}), 201)
    _ok(client.post("/api/entities/ox_line/deactivate", headers=a))
    _ok(client.post("/api/macros/OX/geo_region_name/deactivate", headers=a))
    _ok(client.post("/api/sources", headers=a, json={**NEW, "code": "OLD", "macro_namespace": "OLD"}), 201)
    _ok(client.post("/api/sources/OLD/deactivate", headers=a))
    _ok(client.post("/api/versions", headers=a, json={**V2, "name": "v_os", "anchor_feature": "os_code"}), 201)


def test_every_rule_is_a_clear_4xx_that_writes_nothing(client):
    _setup_for_rules(client)
    before = _catalogue(client)
    for method, path, body, status, message in RULES:
        kwargs = {} if body is None else {"json": body}
        res = client.request(method, path, headers=client.as_admin, **kwargs)
        assert res.status_code == status, (method, path, body, res.text)
        error = res.json()["error"]
        assert message in error and len(error) < 400 and "\n" not in error, (method, path, body, error)
        assert _catalogue(client) == before, (method, path, body)  # the audit log among them: unchanged


def test_audit_query_errors(client):
    assert client.get("/api/audit?entity=nope", headers=client.as_viewer).status_code == 404
    for limit in ("0", "1001", "lots"):
        res = client.get(f"/api/audit?limit={limit}", headers=client.as_viewer)
        assert res.status_code == 422 and "limit" in res.json()["error"], limit


def test_catalogue_routes_are_in_the_openapi_schema(client):
    paths = client.get("/openapi.json").json()["paths"]
    expected = {
        "/api/sources": {"get", "post"},
        "/api/sources/{code}": {"get", "patch"},
        "/api/sources/{code}/deactivate": {"post"},
        "/api/macros": {"get", "post"},
        "/api/macros/{source}/{feature}": {"patch"},
        "/api/macros/{source}/{feature}/deactivate": {"post"},
        "/api/versions": {"get", "post"},
        "/api/versions/{name}": {"get"},
        "/api/entities": {"get", "post"},
        "/api/entities/{entity_code}": {"get", "patch"},
        "/api/entities/{entity_code}/deactivate": {"post"},
        "/api/entities/{entity_code}/configs": {"put"},
        "/api/entities/{entity_code}/version": {"put"},
        "/api/audit": {"get"},
    }
    for path, methods in expected.items():
        assert methods <= set(paths[path]), path
