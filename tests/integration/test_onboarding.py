"""Onboarding an advertiser through the CLI only (README, "Onboarding an advertiser"), on SQLite and
PostgreSQL, from an empty database: supply source, macros, version, admin user, entity with static
configs, a CSV of bid logs imported, a run, a split, and the in-process bidder answering a request for
the new entity from the new run; `bidopt audit` shows every step with its actor. Then each catalogue
rule violation: exit 1, one line, nothing written."""

from __future__ import annotations

import json

import orjson
import pyarrow.csv as pacsv
import pytest
from click.testing import CliRunner

from bidopt.cli.main import cli
from bidopt.settings import reset_settings_cache

ENTITY = "acme_auto"
FAST = ("-c", "xgb_num_rounds=20", "-c", "min_segment_bids=100", "-c", "min_domain_bids=300")
# Only user.geo.region carries the region: the bidder reads it through PMX's macro alternative.
REQUEST = {
    "id": "r1",
    "imp": [{"id": "1"}],
    "user": {"id": "u1", "geo": {"region": "CA"}},
    "device": {"os": "iOS", "devicetype": 1},
    "site": {"domain": "pub00001.com"},
}


@pytest.fixture
def bidopt(db_url, monkeypatch):
    """``bidopt(*args)`` runs the CLI against an empty metadata database at ``db_url``; catalogue writes
    act as alice (``$BIDOPT_USER``) unless ``--by`` says."""
    from bidopt.db.engine import dispose_engines

    monkeypatch.setenv("BIDOPT_DATABASE_URL", db_url)
    monkeypatch.setenv("BIDOPT_USER", "alice")
    reset_settings_cache()
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)

    assert invoke("db", "upgrade").exit_code == 0
    yield invoke
    dispose_engines()


def ok(bidopt, *args) -> str:
    res = bidopt(*args)
    assert res.exit_code == 0, f"bidopt {' '.join(map(str, args))}: {res.output}"
    return res.stdout


def js(bidopt, *args):
    return json.loads(ok(bidopt, *args, "--json"))


def write_logs_csv(path, rows: int = 40_000) -> int:
    """A bid-log CSV in the contract's layout, as an advertiser's export would be (simulated here)."""
    from bidopt.simulator import MarketSpec, simulate_market
    from bidopt.warehouse.contract import CONTRACT_COLUMNS

    table = simulate_market(
        MarketSpec(ENTITY, rows=rows, days=14, seed=11, n_domains=100, auction_type="second_price")
    ).select(list(CONTRACT_COLUMNS))  # the truth_* columns stay in the simulator
    pacsv.write_csv(table, path)
    return table.num_rows


def onboard_catalogue(bidopt) -> None:
    """README steps: supply source, its macros, a version, an entity with static configs."""
    ok(
        bidopt,
        *("sources", "create", "PMX", "--name", "Prime Market SSP"),
        *("--type", "ssp", "--auction", "second_price", "--namespace", "PMX"),
    )
    for feature, template, field in (
        ("geo_region_name", "[PMX_REGION]", "device.geo.region|user.geo.region"),
        ("os_code", "[PMX_OS]", "device.os"),
        ("device_type", "[PMX_DEVICE_TYPE]", "device.devicetype"),
    ):
        ok(bidopt, "macros", "create", "PMX", feature, "--template", template, "--field", field)
    ok(
        bidopt,
        *("versions", "create", "pmx-v1", "--anchor", "geo_region_name"),
        *("--min-win-auc", "0.55", "--max-ece", "0.1", "--min-bid-coverage", "0.5"),
        *("--description", "geo anchor, PMX thresholds"),
    )
    ok(
        bidopt,
        *("entities", "create", ENTITY, "--name", "Acme cars, in-market", "--source", "PMX", "--version", "pmx-v1"),
        *("-c", "domain_enabled=true", "-c", "floor_available=false"),
    )
    ok(bidopt, "entities", "config", "set", ENTITY, "guardrail_min_bids=5000", "guardrail_min_wins=50")


def test_onboarding_walkthrough_ends_with_a_bid_from_the_new_run(bidopt, tmp_path):
    from bidopt.bidder.app import BidderCore

    ok(bidopt, "users", "add", "alice", "--role", "admin")
    assert {u["username"]: u["role"] for u in js(bidopt, "users", "list")} == {"alice": "admin"}
    assert js(bidopt, "entities", "list") == [] and js(bidopt, "sources", "list") == []  # empty: no seed

    onboard_catalogue(bidopt)
    source = js(bidopt, "sources", "show", "PMX")
    assert (source["source_type"], source["auction_type"], source["entities"]) == ("ssp", "second_price", [ENTITY])
    assert {m["feature_name"]: m["status"] for m in source["macros"]} == {
        "geo_region_name": "active",
        "os_code": "active",
        "device_type": "active",
    }
    (version,) = js(bidopt, "versions", "list")
    assert (version["version_name"], version["min_win_auc"], version["runs"]) == ("pmx-v1", 0.55, 0)
    entity = js(bidopt, "entities", "show", ENTITY)
    assert (entity["supply_source"], entity["current_version"], entity["base_path"]) == ("PMX", "pmx-v1", ENTITY)
    assert {k: entity["static_configs"][k] for k in ("domain_enabled", "floor_available", "npi_enabled")} == {
        "domain_enabled": True,
        "floor_available": False,
        "npi_enabled": False,
    }
    assert (entity["static_configs"]["guardrail_min_bids"], entity["static_configs"]["guardrail_min_wins"]) == (
        5000,
        50,
    )

    logs = tmp_path / "acme_auto_bids.csv"
    rows = write_logs_csv(logs)
    assert f"loaded {rows:,} bids from acme_auto_bids.csv" in ok(bidopt, "data", "import", logs, "--entity", ENTITY)
    assert js(bidopt, "data", "summary", ENTITY)["bids"] == rows

    run_id = js(bidopt, "runs", "create", ENTITY, "-c", "target_win_rate=0.4", *FAST)["run_id"]
    ok(bidopt, "optimizer", "run", "--once", "--no-ray")
    run = js(bidopt, "runs", "show", run_id)
    assert (run["status"], run["validation_status"], run["version"]) == ("completed", "passed", "pmx-v1"), run
    anchor = next(f for f in run["features"] if f["is_anchor"])
    assert (anchor["feature_name"], anchor["macro_template"]) == ("geo_region_name", "[PMX_REGION]")
    assert js(bidopt, "versions", "show", "pmx-v1")["runs"] == 1

    split = js(bidopt, "deploy", "set", ENTITY, f"{run_id}=100", "--by", "bob")
    assert [(r["run_id"], r["traffic_pct"]) for r in split["runs"]] == [(run_id, 100)]

    core = BidderCore(start=False)
    try:
        assert core.refresher.refresh_once() == {ENTITY: "loaded"}
        status, body, _ = core.handle(ENTITY, orjson.dumps(REQUEST))
        assert status == 200, body
        (bid,) = json.loads(body)["seatbid"][0]["bid"]
        assert bid["ext"]["run_id"] == run_id and bid["price"] > 0
        assert bid["ext"]["segment_key"].split("|")[0] == "california"  # the anchor, via user.geo.region
    finally:
        core.close()

    # bidopt audit: every catalogue step and the split, newest first, with who did it
    audit = js(bidopt, "audit")
    steps = [(a["action"], a["object_key"], a["actor"]) for a in reversed(audit)]
    expected = [
        ("source.create", "PMX", "alice"),
        ("macro.create", "PMX/geo_region_name", "alice"),
        ("macro.create", "PMX/os_code", "alice"),
        ("macro.create", "PMX/device_type", "alice"),
        ("version.create", "pmx-v1", "alice"),
        ("entity.create", ENTITY, "alice"),
        ("entity.config", ENTITY, "alice"),
        ("split.replace", f"{ENTITY}/{split['split_id']}", "bob"),
    ]
    assert [s for s in steps if s in expected] == expected, steps
    assert {s[0] for s in steps} == {s[0] for s in expected}, steps  # nothing else was written
    assert [a["audit_id"] for a in audit] == sorted((a["audit_id"] for a in audit), reverse=True)
    config = next(a for a in audit if a["action"] == "entity.config")
    assert config["old"] == {"guardrail_min_bids": 1000, "guardrail_min_wins": 20}, config
    assert config["new"] == {"guardrail_min_bids": 5000, "guardrail_min_wins": 50}, config
    split_row = next(a for a in audit if a["action"] == "split.replace")
    assert split_row["entity_code"] == ENTITY and run_id in json.dumps(split_row["new"])
    assert all(a["at"].endswith("Z") for a in audit)
    mine = js(bidopt, "audit", "--entity", ENTITY)
    assert {a["action"] for a in mine} == {"entity.create", "entity.config", "split.replace"}
    table = ok(bidopt, "audit", "--entity", ENTITY)
    assert "split.replace" in table and "bob" in table and "guardrail_min_bids" in table


def test_a_deactivated_entity_leaves_serving_at_the_next_refresh_and_takes_no_new_runs(bidopt, tmp_path):
    from bidopt.bidder.app import BidderCore

    onboard_catalogue(bidopt)
    logs = tmp_path / "logs.csv"
    write_logs_csv(logs, rows=20_000)
    ok(bidopt, "data", "import", logs)  # the file's own entity_code column
    run_id = js(bidopt, "runs", "create", ENTITY, *FAST)["run_id"]
    ok(bidopt, "optimizer", "run", "--once", "--no-ray")
    ok(bidopt, "deploy", "set", ENTITY, f"{run_id}=100")
    core = BidderCore(start=False)
    try:
        core.refresher.refresh_once()
        assert core.handle(ENTITY, orjson.dumps(REQUEST))[0] == 200
        # a macro of a run in an active split can go: the run pinned its request fields
        used = {f["feature_name"] for f in js(bidopt, "runs", "show", run_id)["features"] if not f["is_anchor"]}
        feature = sorted(used)[0] if used else "os_code"
        gone = js(bidopt, "macros", "deactivate", "PMX", feature)
        assert gone["status"] == "inactive" and gone["note"]
        core.refresher.refresh_once()
        assert core.handle(ENTITY, orjson.dumps(REQUEST))[0] == 200
        assert js(bidopt, "macros", "update", "PMX", feature, "--activate")["status"] == "active"

        assert js(bidopt, "entities", "deactivate", ENTITY)["is_active"] is False
        core.refresher.refresh_once()
        status, _, headers = core.handle(ENTITY, orjson.dumps(REQUEST))
        assert status == 204, headers
    finally:
        core.close()
    res = bidopt("runs", "create", ENTITY)
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1, res.output
    actions = [a["action"] for a in js(bidopt, "audit", "--entity", ENTITY)]
    assert actions[0] == "entity.deactivate"


# Each catalogue rule, broken through the CLI: (what, args, words of the one-line error).
VIOLATIONS = [
    (
        "source code",
        (
            "sources",
            "create",
            "bad code!",
            "--name",
            "x",
            "--type",
            "ssp",
            "--auction",
            "first_price",
            "--namespace",
            "BAD",
        ),
        "code",
    ),
    (
        "source type",
        ("sources", "create", "NEW", "--name", "x", "--type", "dsp", "--auction", "first_price", "--namespace", "NEW"),
        "dsp",
    ),
    (
        "auction type",
        ("sources", "create", "NEW", "--name", "x", "--type", "ssp", "--auction", "third_price", "--namespace", "NEW"),
        "third_price",
    ),
    (
        "macro namespace",
        ("sources", "create", "NEW", "--name", "x", "--type", "ssp", "--auction", "first_price", "--namespace", "new"),
        "namespace",
    ),
    (
        "source twice",
        ("sources", "create", "PMX", "--name", "x", "--type", "ssp", "--auction", "first_price", "--namespace", "PMX"),
        "PMX",
    ),
    ("source update without changes", ("sources", "update", "PMX"), ""),
    ("source update of an unknown source", ("sources", "update", "NOPE", "--name", "x"), "NOPE"),
    ("source used by an active entity", ("sources", "deactivate", "PMX"), ENTITY),
    (
        "macro field path",
        ("macros", "create", "PMX", "browser_code", "--template", "[PMX_UA]", "--field", "device..ua"),
        "device..ua",
    ),
    (
        "macro field object",
        ("macros", "create", "PMX", "browser_code", "--template", "[PMX_UA]", "--field", "browser.ua"),
        "browser.ua",
    ),
    (
        "macro field alternative",
        ("macros", "create", "PMX", "browser_code", "--template", "[PMX_UA]", "--field", "device.ua|"),
        "dotted path",
    ),
    (
        "macro field length",
        ("macros", "create", "PMX", "browser_code", "--template", "[PMX_UA]", "--field", "device." + "a" * 200),
        "200",
    ),
    (
        "macro template namespace",
        ("macros", "create", "PMX", "browser_code", "--template", "[ADX_UA]", "--field", "device.ua"),
        "[ADX_UA]",
    ),
    (
        "macro template form",
        ("macros", "create", "PMX", "browser_code", "--template", "PMX_UA", "--field", "device.ua"),
        "PMX_UA",
    ),
    (
        "macro feature",
        ("macros", "create", "PMX", "colour", "--template", "[PMX_COLOUR]", "--field", "device.ua"),
        "colour",
    ),
    (
        "macro of an unknown source",
        ("macros", "create", "NOPE", "browser_code", "--template", "[NOPE_UA]", "--field", "device.ua"),
        "NOPE",
    ),
    ("macro update field", ("macros", "update", "PMX", "os_code", "--field", "device.os.."), "device.os.."),
    ("anchor macro of an active entity", ("macros", "deactivate", "PMX", "geo_region_name"), ENTITY),
    (
        "version name",
        (
            "versions",
            "create",
            "bad name",
            "--anchor",
            "geo_region_name",
            "--min-win-auc",
            "0.6",
            "--max-ece",
            "0.1",
            "--min-bid-coverage",
            "0.5",
        ),
        "name",
    ),
    (
        "version twice",
        (
            "versions",
            "create",
            "pmx-v1",
            "--anchor",
            "geo_region_name",
            "--min-win-auc",
            "0.6",
            "--max-ece",
            "0.1",
            "--min-bid-coverage",
            "0.5",
        ),
        "pmx-v1",
    ),
    (
        "version anchor",
        (
            "versions",
            "create",
            "v9",
            "--anchor",
            "colour",
            "--min-win-auc",
            "0.6",
            "--max-ece",
            "0.1",
            "--min-bid-coverage",
            "0.5",
        ),
        "colour",
    ),
    (
        "version AUC range",
        (
            "versions",
            "create",
            "v9",
            "--anchor",
            "geo_region_name",
            "--min-win-auc",
            "0.4",
            "--max-ece",
            "0.1",
            "--min-bid-coverage",
            "0.5",
        ),
        "min_win_auc",
    ),
    (
        "version ECE nan",
        (
            "versions",
            "create",
            "v9",
            "--anchor",
            "geo_region_name",
            "--min-win-auc",
            "0.6",
            "--max-ece",
            "nan",
            "--min-bid-coverage",
            "0.5",
        ),
        "max_win_ece",
    ),
    (
        "version ECE zero",
        (
            "versions",
            "create",
            "v9",
            "--anchor",
            "geo_region_name",
            "--min-win-auc",
            "0.6",
            "--max-ece",
            "0",
            "--min-bid-coverage",
            "0.5",
        ),
        "max_win_ece",
    ),
    (
        "version coverage overflow",
        (
            "versions",
            "create",
            "v9",
            "--anchor",
            "geo_region_name",
            "--min-win-auc",
            "0.6",
            "--max-ece",
            "0.1",
            "--min-bid-coverage",
            "1e400",
        ),
        "min_bid_coverage",
    ),
    (
        "version coverage text",
        (
            "versions",
            "create",
            "v9",
            "--anchor",
            "geo_region_name",
            "--min-win-auc",
            "0.6",
            "--max-ece",
            "0.1",
            "--min-bid-coverage",
            "abc",
        ),
        "min_bid_coverage",
    ),
    (
        "entity code",
        ("entities", "create", "../acme", "--name", "x", "--source", "PMX", "--version", "pmx-v1"),
        "../acme",
    ),
    ("entity twice", ("entities", "create", ENTITY, "--name", "x", "--source", "PMX", "--version", "pmx-v1"), ENTITY),
    (
        "entity version without an anchor macro",
        ("entities", "create", "acme_vans", "--name", "x", "--source", "PMX", "--version", "browser-v1"),
        "browser_code",
    ),
    (
        "entity on an inactive source",
        ("entities", "create", "acme_vans", "--name", "x", "--source", "OLD", "--version", "pmx-v1"),
        "OLD",
    ),
    (
        "entity of an unknown version",
        ("entities", "create", "acme_vans", "--name", "x", "--source", "PMX", "--version", "v404"),
        "v404",
    ),
    (
        "entity static config value",
        (
            "entities",
            "create",
            "acme_vans",
            "--name",
            "x",
            "--source",
            "PMX",
            "--version",
            "pmx-v1",
            "-c",
            "npi_enabled=maybe",
        ),
        "npi_enabled",
    ),
    ("use-version without an anchor macro", ("entities", "use-version", ENTITY, "browser-v1"), "browser_code"),
    (
        "config range, all or nothing",
        ("entities", "config", "set", ENTITY, "npi_enabled=true", "guardrail_min_bids=0"),
        "guardrail_min_bids",
    ),
    ("config key", ("entities", "config", "set", ENTITY, "colour=red"), "colour"),
    ("config pair", ("entities", "config", "set", ENTITY, "npi_enabled"), "key=value"),
    ("entity update without changes", ("entities", "update", ENTITY), ""),
]


def snapshot(bidopt) -> dict:
    return {
        args: js(bidopt, *args)
        for args in (
            ("audit",),
            ("sources", "list"),
            ("macros", "list"),
            ("versions", "list"),
            ("entities", "list"),
            ("entities", "show", ENTITY),
        )
    }


def test_each_rule_violation_is_one_line_exit_1_and_writes_nothing(bidopt):
    onboard_catalogue(bidopt)
    ok(
        bidopt,
        *("versions", "create", "browser-v1", "--anchor", "browser_code"),
        *("--min-win-auc", "0.55", "--max-ece", "0.1", "--min-bid-coverage", "0.5"),
    )
    ok(
        bidopt,
        *("sources", "create", "OLD", "--name", "x", "--type", "exchange"),
        *("--auction", "first_price", "--namespace", "OLD"),
    )
    ok(bidopt, "sources", "deactivate", "OLD")
    before = snapshot(bidopt)
    for what, args, words in VIOLATIONS:
        res = bidopt(*args)
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert res.exit_code == 1 and len(lines) == 1, f"{what}: exit {res.exit_code}: {res.output}"
        assert lines[0].startswith("Error: ") and words in lines[0], f"{what}: {lines[0]}"
        assert snapshot(bidopt) == before, f"{what} wrote something"
