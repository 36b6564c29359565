"""The web UI in a real browser: headless Chromium (Debian's) driven by Playwright.

The app is served by uvicorn on loopback (the same FastAPI app Ray Serve hosts).
"""

import shutil
import socket
import threading
import time

import pytest
import uvicorn
from servable_runs import complete_servable
from servers import missing_service

from bidopt.bidder.loader import Refresher
from bidopt.db import access
from bidopt.db import queries as q
from bidopt.db.engine import session_scope
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
