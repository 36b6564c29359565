"""The web UI in a real browser: headless Chromium (Debian's) driven by Playwright.

The app is served by uvicorn on loopback (the same FastAPI app Ray Serve hosts).
"""

import shutil
import socket
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import uvicorn
from servable_runs import complete_servable
from servers import missing_service
from sqlalchemy import update

from bidopt.bidder.loader import Refresher
from bidopt.db import access
from bidopt.db import queries as q
from bidopt.db.engine import session_scope
from bidopt.db.models import OptRun
from bidopt.events.schema import DECISIONS, FLOOR_NO_BID_REASON, NOTICES, rows_to_table
from bidopt.events.store import hour_of, open_event_store
from bidopt.serve.api import create_app
from bidopt.settings import get_settings

pytestmark = pytest.mark.slow
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def browser():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        missing_service("chromium is not installed (Debian package `chromium`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing_service("the playwright package is not installed")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_FLAGS)
        yield b
        b.close()


@pytest.fixture
def server(platform_db):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_operator_creates_a_run_and_sets_an_80_20_split(platform_db, server, browser, tmp_path):
    with session_scope(platform_db) as s:
        access.create_user(s, "olivia", "operator")
        token = access.create_api_token(s, "olivia")[1]
        done = [q.create_run(s, "drugs_hcp", {}, triggered_by="seed").run_id for _ in range(2)]
    for run_id in done:  # with artifacts: a split only switches to runs bidders can load
        complete_servable(platform_db, run_id)
    replica = Refresher(get_settings().database_url, interval=60, replica_id="bidder-host:1:ui")
    replica.first_load(timeout=5)  # a bidder replica that has loaded the (empty) split and reports

    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server)
    page.fill("#token-input", token)
    page.click("#token-save")
    page.wait_for_selector("#entities-table")
    assert "olivia" in page.inner_text("#who")

    # entity page: static settings and the Run optimizer form
    page.click("text=drugs_hcp")
    page.wait_for_selector("#run-form")
    assert "npi_enabled" in page.inner_text("main")
    page.fill("#cfg-target_win_rate", "1.5")  # invalid: the server's message is shown
    page.click("#run-submit")
    page.wait_for_selector("#run-message.bad")
    assert "target_win_rate must be < 1.0" in page.inner_text("#run-message")
    page.fill("#cfg-target_win_rate", "0.45")
    page.select_option("#cfg-exploration_mode", "uplift")
    page.click("#run-submit")
    page.wait_for_selector("#run-message.ok")
    with session_scope(platform_db) as s:
        newest = q.list_runs(s, entity_code="drugs_hcp", limit=1)[0]
        assert (newest.status, newest.triggered_by) == ("pending", "olivia")
        assert q.get_run_configs(s, newest.run_id)["target_win_rate"] == 0.45
        assert q.get_run_configs(s, newest.run_id)["exploration_mode"] == "uplift"

    # the page reloads itself after creating a run: wait for that, or it may redraw the next page
    page.wait_for_selector(f'#runs-table tr[data-run="{newest.run_id}"]')

    # A/B page: live validation, then 80/20
    page.goto(server + "#/ab/drugs_hcp")
    page.wait_for_selector(".split-input")
    a, b = done
    page.fill(f'.split-input[data-run="{a}"]', "70")
    page.fill(f'.split-input[data-run="{b}"]', "20")
    assert "must add up to 100" in page.inner_text("#split-check")
    assert page.is_disabled("#split-save")
    page.fill(f'.split-input[data-run="{a}"]', "80")
    assert page.inner_text("#split-check") == "valid" and page.inner_text("#split-total") == "100%"
    page.click("#split-save")
    page.wait_for_selector("#split-message.ok")
    page.wait_for_selector(f'#split-current:has-text("{a}: 80%")')
    with session_scope(platform_db) as s:
        active = {d.run_id: (d.traffic_pct, d.deployed_by) for d in q.get_current_traffic_split(s, "drugs_hcp")}
    assert active == {a: (80, "olivia"), b: (20, "olivia")}
    # the replica has not refreshed since: the page says it lags and why; after its refresh, live
    assert page.inner_text("#split-live") == "1 of 1 bidder replicas lag"
    assert "bidder-host:1:ui" in page.inner_text("#split-replicas")
    assert "has not refreshed since the change" in page.inner_text("#split-replicas")
    replica.refresh_once()
    page.reload()
    page.wait_for_selector('#split-live:has-text("live on all 1 bidder replica")')
    assert page.query_selector("#split-replicas") is None
    replica.stop()
    page.screenshot(path=str(tmp_path / "ab.png"))
    assert errors == []


def _write_split_events(split_id: int, arms: list[dict], start: datetime) -> None:
    """Synthetic decision and notice events of ``split_id`` over three hours from ``start``: per arm
    ``impressions`` decisions (one imp per request), of which the first ``bids`` were bid on, the
    first ``wins`` of those won (a win and a billing notice at ``price``) and the first ``clicks`` of
    those clicked; plus ``test`` exchange test requests and the first ``replays`` win notices sent twice.
    The no-bids give ``no_bid_reason`` (default: a reason no readout counts)."""
    rows: dict[tuple[str, datetime], list[dict]] = {}
    for a in arms:
        n = a["impressions"] + a["test"]
        for j in range(n):
            at = start + timedelta(seconds=j * 3 * 3600 / n)
            # i: the impression's rank (bid, won, clicked below the counts), shuffled over the hours
            i = j * 7919 % a["impressions"] if j < a["impressions"] else j
            request_id, test = f"req-{a['arm']}-{i}", i >= a["impressions"]
            bid = test or i < a["bids"]
            decision = {
                "event_time": at,
                "entity_code": "drugs_hcp",
                "request_id": request_id,
                "imp_id": "1",
                "split_id": split_id,
                "run_id": a["run_id"],
                "arm": a["arm"],
                "user_hash": f"user-{a['arm']}-{i % 97}",
                "test": test,
                "bid": bid,
                "bid_cpm": 2.5 if bid else None,
                "no_bid_reason": None if bid else a.get("no_bid_reason", "below_floor"),
                "segment_key": "california",
                "level": "segment",
                "geo_region_name": "california",
                "npi_matched": False,
            }
            rows.setdefault((DECISIONS, hour_of(at)), []).append(decision)
            note = {
                "entity_code": "drugs_hcp",
                "request_id": request_id,
                "imp_id": "1",
                "split_id": split_id,
                "run_id": a["run_id"],
                "bid_cpm": 2.5,
                "bid_time": at,
                "test": test,
            }
            kinds = []
            if test or i < a["wins"]:
                kinds += ["win", "billing"] + (["win"] if i < a["replays"] else [])
            if not test and i < a["clicks"]:
                kinds.append("click")
            if bid and not kinds:
                kinds.append("loss")
            for k, kind in enumerate(kinds):
                price = a["price"] if kind in ("win", "billing") else None
                notice = {**note, "event_time": at + timedelta(seconds=5 + k), "kind": kind, "price_cpm": price}
                rows.setdefault((NOTICES, hour_of(at)), []).append(notice)
    store = open_event_store(get_settings().events_url)
    for seq, ((kind, hour), part) in enumerate(sorted(rows.items())):
        store.write_part(kind, "drugs_hcp", hour, rows_to_table(kind, part), writer_id="ui-test", seq=seq)


def _text(page, selector: str) -> str:
    return page.inner_text(selector).strip()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_results_page_shows_each_arm_and_promotes_the_winner(platform_db, server, browser):
    with session_scope(platform_db) as s:
        access.create_user(s, "olivia", "operator")
        access.create_user(s, "victor", "viewer")
        token = access.create_api_token(s, "olivia")[1]
        viewer_token = access.create_api_token(s, "victor")[1]
        low, high = (
            q.create_run(s, "drugs_hcp", {"target_win_rate": t}, triggered_by="seed").run_id for t in (0.4, 0.65)
        )
    for run_id in (low, high):
        complete_servable(platform_db, run_id)
    deployed = datetime.now(timezone.utc).replace(tzinfo=None, minute=0, second=0, microsecond=0) - timedelta(hours=4)
    with session_scope(platform_db) as s:  # deployed four hours ago, so that its three hours of events are its own
        split = q.replace_traffic_split(s, "drugs_hcp", {low: 60, high: 40}, deployed_by="olivia", now=deployed)
        split_id = split[0].split_id
        entity_id = q.get_entity_by_code(s, "drugs_hcp").entity_id
        guardrail = {"guardrail_min_bids": 100, "guardrail_min_wins": 10, "guardrail_max_win_rate_gap": 0.1}
        for key, value in guardrail.items():  # small enough that these arms are judged
            q.set_entity_config(s, entity_id, key, value)
    arms = [  # arm 0 wins 22% of its bids against a target of 40% (a guardrail breach), arm 1 65% as it aims
        dict(arm=0, run_id=low, impressions=300, bids=270, wins=60, clicks=9, test=12, replays=5, price=2.0),
        dict(arm=1, run_id=high, impressions=200, bids=190, wins=124, clicks=6, test=0, replays=3, price=3.0),
    ]
    arms[1]["no_bid_reason"] = FLOOR_NO_BID_REASON  # its 10 no-bids count as losses against its target
    _write_split_events(split_id, arms, deployed + timedelta(minutes=30))

    page = browser.new_page(viewport={"width": 1280, "height": 1200})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: dialog.accept())  # the promote button asks to confirm
    page.goto(server)
    page.fill("#token-input", token)
    page.click("#token-save")
    page.wait_for_selector("#entities-table")

    # from the A/B page to the results of the active split
    page.goto(server + "#/ab/drugs_hcp")
    page.wait_for_selector("#results-link")
    page.click("#results-link")
    page.wait_for_selector("#arms-table")
    for a in arms:
        row = f'#arms-table tr[data-arm="{a["arm"]}"]'
        assert _text(page, f'{row} [data-metric="run_id"]') == a["run_id"]
        shown = {m: _text(page, f'{row} [data-metric="{m}"]') for m in ("requests", "bids", "wins", "clicks")}
        assert shown == {m: str(a["impressions"] if m == "requests" else a[m]) for m in shown}
        win_rate = _text(page, f'{row} [data-metric="win_rate"]').removeprefix("⚠ ")  # a flagged cell's mark
        assert win_rate.startswith(f"{100 * a['wins'] / a['bids']:.1f}%") and "[" in win_rate  # with its interval
        spend = _text(page, f'{row} [data-metric="spend"]')
        assert spend.startswith(f"{a['wins'] * a['price'] / 1000:.3g}")
        assert _text(page, f'{row} [data-metric="ecpm"]').startswith(f"{a['price']:.2f}")
        assert "NaN" not in page.inner_text(row)
    assert _text(page, '[data-metric="test_requests_excluded"]') == "12"
    assert _text(page, '[data-metric="duplicates_dropped"]') == "8"
    assert page.query_selector("#no-traffic") is None
    # arm 0's whole win-rate interval is more than 10 points below its target: its gap is flagged (not
    # the per-bid rate, which is not what the guardrail judges); arm 1 is on target
    assert page.query_selector('#arms-table tr[data-arm="0"] [data-metric="win_rate_gap"].flag') is not None
    assert page.query_selector('#arms-table tr[data-arm="0"] [data-metric="win_rate"].flag') is None
    # arm 1's gap is on the target's basis: 124 wins of 190 bids + 10 floor no-bids, 62% against 65%
    assert _text(page, '#arms-table tr[data-arm="1"] [data-metric="floor_no_bids"]') == "10"
    assert _text(page, '#arms-table tr[data-arm="1"] [data-metric="win_rate_gap"]').startswith("−3.0 pp")
    assert _text(page, '#arms-table tr[data-arm="1"] [data-metric="priced_win_rate"]').startswith("priced 62.0%")
    assert _text(page, '#arms-table tr[data-arm="0"] [data-metric="guardrail"]') == "breach"
    assert page.query_selector('#arms-table tr[data-arm="1"] .flag') is None
    assert _text(page, '#arms-table tr[data-arm="1"] [data-metric="guardrail"]') == "ok"
    win_rate_test = page.inner_text('#comparisons tr[data-metric="win_rate"]')
    gap = 100 * (arms[1]["wins"] / arms[1]["bids"] - arms[0]["wins"] / arms[0]["bids"])
    assert f"+{gap:.1f} pp" in win_rate_test
    assert "significant" in win_rate_test and "not significant" not in win_rate_test
    for plot in ("#winrate-plot", "#spend-plot"):  # a line and (win rate) a band per arm
        assert len(page.query_selector_all(f"{plot} path.line")) == 2
    assert len(page.query_selector_all("#winrate-plot path.band")) == 2
    assert len(page.query_selector_all("#winrate-plot line.target")) == 2
    page.screenshot(path="/tmp/results_page.png", full_page=True)

    # a refused promotion shows the server's reason and changes nothing
    with session_scope(platform_db) as s:
        s.execute(update(OptRun).where(OptRun.run_id == low).values(validation_status="failed"))
    page.click(f'#arms-table tr[data-run="{low}"] button.promote')
    page.wait_for_selector("#promote-message.bad")
    assert "did not pass validation" in page.inner_text("#promote-message")
    with session_scope(platform_db) as s:
        assert {d.run_id for d in q.get_current_traffic_split(s, "drugs_hcp")} == {low, high}
        s.execute(update(OptRun).where(OptRun.run_id == low).values(validation_status="passed"))

    # promote the better arm: the A/B page shows it at 100%
    page.click(f'#arms-table tr[data-run="{high}"] button.promote')
    page.wait_for_selector("#promote-message.ok")
    assert f"{high}: 100%" in page.inner_text("#promote-message")
    page.goto(server + "#/ab/drugs_hcp")
    page.wait_for_selector(f'#split-current:has-text("{high}: 100%")')
    assert f"{low}: " not in page.inner_text("#split-current")

    # a guardrail rollback is marked in the history, and its results say there is no traffic yet
    with session_scope(platform_db) as s:
        rolled = q.replace_traffic_split(
            s, "drugs_hcp", {low: 100}, deployed_by="guardrail", reason="arm 0 win rate 2% far below target 65%"
        )[0].split_id
    page.reload()
    row = f'#split-history tr[data-split="{rolled}"]'
    page.wait_for_selector(f"{row}.guardrail")
    assert "guardrail rollback" in page.inner_text(row) and "far below target" in page.inner_text(row)
    page.click(f"{row} a.results-link")
    page.wait_for_selector("#no-traffic")
    assert "No traffic recorded for this split yet" in page.inner_text("#no-traffic")
    assert "guardrail rollback" in page.inner_text("#results-head")
    assert "NaN" not in page.inner_text("main") and page.query_selector("#winrate-plot") is None

    # a viewer sees the results but cannot promote
    viewer = browser.new_page()
    viewer.on("pageerror", lambda exc: errors.append(str(exc)))
    viewer.goto(server)
    viewer.fill("#token-input", viewer_token)
    viewer.click("#token-save")
    viewer.wait_for_selector("#entities-table")
    viewer.goto(server + f"#/results/drugs_hcp/{split_id}")
    viewer.wait_for_selector("#arms-table")
    buttons = viewer.query_selector_all("#arms-table button.promote")
    assert len(buttons) == 2 and all(b.is_disabled() for b in buttons)
    assert errors == []


def _sign_in(page, server, token):
    page.goto(server)
    page.fill("#token-input", token)
    page.click("#token-save")
    page.wait_for_selector("#entities-table")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_admin_onboards_an_entity_through_the_ui_and_the_audit_page_lists_it(platform_db, server, browser):
    from bidopt import service

    with session_scope(platform_db) as s:
        access.create_user(s, "ada", "admin")
        access.create_user(s, "victor", "viewer")
        token = access.create_api_token(s, "ada")[1]
        viewer_token = access.create_api_token(s, "victor")[1]
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: dialog.accept())  # deactivating asks to confirm
    _sign_in(page, server, token)
    assert "ada" in page.inner_text("#who") and "admin" in page.inner_text("#who")

    # the catalogue: a supply source, a macro (a bad request field first: the server's reason), a version
    page.click("#links >> text=Catalogue")
    page.wait_for_selector("#source-form")
    assert "[ADX_GEO_STATE]" in page.inner_text('.macros-table[data-source="ADX"]')
    page.fill("#source-code", "OX")
    page.fill("#source-name", "OpenX")
    page.select_option("#source-type", "ssp")
    page.select_option("#source-auction", "second_price")
    page.fill("#source-namespace", "OX")
    page.click("#source-submit")
    page.wait_for_selector("#source-message.ok")
    page.wait_for_selector('#sources-table tr[data-source="OX"]')
    page.select_option("#macro-source", "OX")
    page.fill("#macro-feature", "geo_region_name")
    page.fill("#macro-template", "[OX_GEO]")
    page.fill("#macro-field", "device..geo")
    page.click("#macro-submit")
    page.wait_for_selector("#macro-message.bad")
    assert "is not a dotted path" in page.inner_text("#macro-message")
    page.fill("#macro-field", "device.geo.region")
    page.click("#macro-submit")
    page.wait_for_selector("#macro-message.ok")
    assert "[OX_GEO]" in page.inner_text('.macros-table[data-source="OX"]')
    page.click('.macros-table tr[data-source="OX"][data-feature="geo_region_name"] button.edit-macro')  # change it
    assert page.input_value("#macro-feature") == "geo_region_name" and "Change macro" in page.inner_text("#macro-form")
    page.fill("#macro-field", "device.geo.region|user.geo.region")
    page.click("#macro-submit")
    page.wait_for_selector('#macro-message.ok:has-text("Changed macro [OX_GEO]")')
    assert "user.geo.region" in page.inner_text('.macros-table tr[data-source="OX"][data-feature="geo_region_name"]')
    page.fill("#version-name", "v2")
    page.fill("#version-min_win_auc", "0.4")
    page.fill("#version-max_win_ece", "0.04")
    page.fill("#version-min_bid_coverage", "0.9")
    page.click("#version-submit")
    page.wait_for_selector("#version-message.bad")
    assert "min_win_auc must be >= 0.5" in page.inner_text("#version-message")
    page.fill("#version-min_win_auc", "0.6")
    page.click("#version-submit")
    page.wait_for_selector('#versions-table tr[data-version="v2"]')

    # a new entity: a bad static config value is refused with the server's reason, nothing is created
    page.click("#links >> text=Entities")
    page.wait_for_selector("#entity-form")
    page.fill("#new-entity-code", "vet_clinics")
    page.fill("#new-entity-name", "Pet health, veterinary clinics")
    page.select_option("#new-entity-source", "ADX")
    page.select_option("#new-entity-version", "v1")
    page.select_option("#new-entity-cfg-domain_enabled", "true")
    page.fill("#new-entity-cfg-guardrail_min_bids", "0")
    page.click("#entity-submit")
    page.wait_for_selector("#entity-message.bad")
    assert "guardrail_min_bids must be >= 1" in page.inner_text("#entity-message")
    assert page.query_selector('#entities-table tr[data-entity="vet_clinics"]') is None
    with session_scope(platform_db) as s:
        assert {e["entity_code"] for e in service.list_entities(s)} == {"drugs_hcp", "auto_intenders"}
    page.fill("#new-entity-cfg-guardrail_min_bids", "500")  # fixed: created, and listed
    page.click("#entity-submit")
    page.wait_for_selector("#entity-message.ok")
    assert "Created entity vet_clinics" in page.inner_text("#entity-message")
    page.wait_for_selector('#entities-table tr[data-entity="vet_clinics"]')
    with session_scope(platform_db) as s:
        vet = service.get_entity(s, "vet_clinics")
    assert (vet["supply_source"], vet["current_version"], vet["base_path"]) == ("ADX", "v1", "vet_clinics")
    assert vet["static_configs"]["domain_enabled"] is True and vet["static_configs"]["guardrail_min_bids"] == 500

    # its page: static configs (a bad value first), another version, deactivation
    page.click('#entities-table a[href="#/entity/vet_clinics"]')
    page.wait_for_selector("#static-form")
    page.fill("#static-guardrail_max_win_rate_gap", "2")
    page.click("#static-submit")
    page.wait_for_selector("#static-message.bad")
    assert "guardrail_max_win_rate_gap must be <= 1.0" in page.inner_text("#static-message")
    page.fill("#static-guardrail_max_win_rate_gap", "0.2")
    page.click("#static-submit")
    page.wait_for_selector("#static-message.ok")
    page.select_option("#use-version-select", "v2")
    page.click("#use-version-submit")
    page.wait_for_selector("#use-version-message.ok")
    assert "version v2" in page.inner_text("#use-version-message")
    page.click("#entity-deactivate")
    page.wait_for_selector("#entity-inactive")
    with session_scope(platform_db) as s:
        vet = service.get_entity(s, "vet_clinics")
    assert vet["static_configs"]["guardrail_max_win_rate_gap"] == 0.2
    assert (vet["current_version"], vet["is_active"]) == ("v2", False)

    # the audit page lists every step, with who and the new values; filtered by the entity
    page.click("#links >> text=Audit")
    created = '#audit-table tr[data-action="entity.create"][data-entity="vet_clinics"]'
    page.wait_for_selector(created)
    assert "ada" in page.inner_text(created) and "guardrail_min_bids" in page.inner_text(created)
    for action in ("source.create", "macro.create", "macro.update", "version.create"):
        assert page.query_selector(f'#audit-table tr[data-action="{action}"]') is not None, action
    page.select_option("#audit-entity", "vet_clinics")
    page.wait_for_selector('#audit-table tr[data-action="source.create"]', state="detached")  # redrawn, filtered
    rows = page.query_selector_all("#audit-table tr[data-action]")
    assert [r.get_attribute("data-action") for r in rows] == [
        "entity.deactivate",
        "entity.use_version",
        "entity.config",
        "entity.create",
    ]
    assert {r.get_attribute("data-entity") for r in rows} == {"vet_clinics"}
    assert "0.15" in rows[2].inner_text() and "0.2" in rows[2].inner_text()  # old and new

    # a viewer sees all of it read-only
    viewer = browser.new_page(viewport={"width": 1280, "height": 1400})
    viewer.on("pageerror", lambda exc: errors.append(str(exc)))
    _sign_in(viewer, server, viewer_token)
    assert viewer.query_selector('#entities-table tr[data-entity="vet_clinics"]') is not None
    assert viewer.query_selector("#entity-form") is None
    viewer.goto(server + "#/entity/vet_clinics")
    viewer.wait_for_selector("#runs-table")
    assert viewer.query_selector("#entity-admin") is None and viewer.query_selector("#static-form") is None
    viewer.goto(server + "#/catalogue")
    viewer.wait_for_selector('#sources-table tr[data-source="OX"]')
    assert viewer.query_selector("#source-form") is None and viewer.query_selector("#sources-table button") is None
    assert "Only admins change the catalogue" in viewer.inner_text("main")
    viewer.goto(server + "#/audit/vet_clinics")
    viewer.wait_for_selector('#audit-table tr[data-action="entity.create"]')
    assert errors == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_status_page_shows_the_split_the_replicas_and_their_rates(platform_db, server, browser):
    """#/status (GET /api/status): a replica's report with its traffic window, as `bidopt status` reads it."""
    from bidopt.db import bidder_status

    with session_scope(platform_db) as s:
        access.create_user(s, "victor", "viewer")
        token = access.create_api_token(s, "victor")[1]
        run_id = q.create_run(s, "drugs_hcp", {}, triggered_by="seed").run_id
    complete_servable(platform_db, run_id)
    with session_scope(platform_db) as s:
        split_id = q.replace_traffic_split(s, "drugs_hcp", {run_id: 100}, deployed_by="olivia")[0].split_id
    traffic = {"window_seconds": 120, "requests": 240, "bids": 180, "no_bids": {"floor": 54, "no_split": 6}}
    with session_scope(platform_db) as s:
        bidder_status.report_replica(
            s,
            {
                "replica_id": "bidder-host:7:st",
                "hostname": "bidder-host",
                "pid": 7,
                "ready": True,
                "refresh_seconds": 60,
                "serving": {"drugs_hcp": {"split_id": split_id, "loaded_at": "2026-01-31T12:00:00Z", "runs": []}},
                "last_error": None,
                "counters": {"traffic": {"drugs_hcp": traffic}},
            },
            started_at=time.time() - 120,
        )

    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    _sign_in(page, server, token)
    page.click("#links >> text=Status")
    page.wait_for_selector('.status-entity[data-entity="drugs_hcp"]')
    drugs = page.query_selector('.status-entity[data-entity="drugs_hcp"]')
    assert f"{run_id}: 100%" in drugs.query_selector(".status-split").inner_text()
    assert drugs.query_selector(".status-live.ok").inner_text() == "live on all 1 bidder replica"
    assert drugs.query_selector('[data-metric="bids_per_second"]').inner_text() == "1.5/s (180)"
    assert drugs.query_selector('[data-metric="requests_per_second"]').inner_text() == "2/s (240)"
    assert drugs.query_selector('tr[data-reason="floor"]').inner_text().split() == ["floor", "0.45/s", "54"]
    replica = drugs.query_selector('tr[data-replica="bidder-host:7:st"]').inner_text()
    assert "live" in replica and "2026-01-31T12:00:00Z" in replica
    auto = page.query_selector('.status-entity[data-entity="auto_intenders"]')
    assert "none" in auto.query_selector(".status-split").inner_text()
    assert auto.query_selector(".traffic-none") is not None

    page.click('.status-entity[data-entity="drugs_hcp"] h2 >> text=drugs_hcp')  # one entity's own page
    page.wait_for_selector('.status-entity[data-entity="auto_intenders"]', state="detached")
    assert page.url.endswith("#/status/drugs_hcp")
    assert errors == []
