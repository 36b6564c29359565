// bidopt web UI: one page, hash routes, the management API behind every view. No build step.
"use strict";

const main = document.getElementById("main");
const TOKEN_KEY = "bidopt.token";

function esc(v) {
  return String(v ?? "").replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}
function fmt(v, digits = 4) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return Number.isInteger(v) ? v.toLocaleString("en-US") : String(Number(v.toPrecision(digits)));
  if (typeof v === "boolean") return v ? "yes" : "no";
  return esc(v);
}

async function api(method, path, body) {
  const headers = {"Authorization": "Bearer " + (localStorage.getItem(TOKEN_KEY) || "")};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  const data = await res.json().catch(() => ({error: res.statusText}));
  if (res.status === 401) { showLogin(data.error); throw new Error(data.error); }
  if (!res.ok) throw new Error(data.error || res.statusText);
  return data;
}

function showLogin(message) {
  main.innerHTML = `<section><h2>Sign in</h2>
    <p class="muted">Paste an API token (<code>bidopt tokens create USER</code>; <code>bidopt serve</code> prints one).</p>
    <input id="token-input" size="60" placeholder="bo_…"> <button id="token-save">Sign in</button>
    <div class="msg bad">${esc(message || "")}</div></section>`;
  document.getElementById("token-save").onclick = () => {
    localStorage.setItem(TOKEN_KEY, document.getElementById("token-input").value.trim());
    route();
  };
}

let me = null;

async function route() {
  if (!localStorage.getItem(TOKEN_KEY)) return showLogin("");
  try {
    me = await api("GET", "/api/me");
    document.getElementById("who").innerHTML = `${esc(me.username)} <span class="pill">${esc(me.role)}</span>
      <a href="#" id="sign-out" style="margin-left:.6rem">sign out</a>`;
    document.getElementById("sign-out").onclick = e => { e.preventDefault(); localStorage.removeItem(TOKEN_KEY); route(); };
    const [, page, arg, arg2] = (location.hash || "#/").split("/");
    if (page === "entity") await entityPage(decodeURIComponent(arg));
    else if (page === "results") await resultsPage(decodeURIComponent(arg), arg2 ? decodeURIComponent(arg2) : null);
    else if (page === "run") await runPage(decodeURIComponent(arg));
    else if (page === "compare") await comparePage(decodeURIComponent(arg).split(","));
    else if (page === "ab") await abPage(decodeURIComponent(arg));
    else await entitiesPage();
  } catch (err) {
    if (localStorage.getItem(TOKEN_KEY) && me) main.innerHTML = `<section class="bad">${esc(err.message)}</section>`;
  }
}
window.addEventListener("hashchange", route);

function crumbs(html) { document.getElementById("crumbs").innerHTML = html; }

async function entitiesPage() {
  crumbs("");
  const entities = await api("GET", "/api/entities");
  main.innerHTML = `<section><h2>Entities</h2><table id="entities-table"><tr><th>entity</th><th>name</th>
    <th>supply source</th><th>version</th><th>floor_available</th><th>npi_enabled</th><th>domain_enabled</th></tr>
    ${entities.map(e => `<tr><td><a href="#/entity/${esc(e.entity_code)}">${esc(e.entity_code)}</a></td>
      <td>${esc(e.name)}</td><td>${esc(e.supply_source)} (${esc(e.auction_type)})</td><td>${esc(e.current_version)}</td>
      <td>${fmt(e.static_configs.floor_available)}</td><td>${fmt(e.static_configs.npi_enabled)}</td>
      <td>${fmt(e.static_configs.domain_enabled)}</td></tr>`).join("")}</table></section>`;
}

function configInput(spec) {
  const id = `cfg-${spec.key}`;
  if (spec.value_type === "bool")
    return `<label>${esc(spec.key)}<select id="${id}" data-key="${esc(spec.key)}" title="${esc(spec.description)}">
      <option value="false" ${spec.default ? "" : "selected"}>false</option>
      <option value="true" ${spec.default ? "selected" : ""}>true</option></select></label>`;
  if (spec.choices.length)
    return `<label>${esc(spec.key)}<select id="${id}" data-key="${esc(spec.key)}" title="${esc(spec.description)}">
      ${spec.choices.map(c => `<option ${c === spec.default ? "selected" : ""}>${esc(c)}</option>`).join("")}</select></label>`;
  return `<label>${esc(spec.key)} <span class="muted">${esc(spec.description)}</span>
    <input id="${id}" data-key="${esc(spec.key)}" value="${esc(spec.default)}"></label>`;
}

async function entityPage(code) {
  crumbs(`/ <a href="#/entity/${esc(code)}">${esc(code)}</a> · <a href="#/ab/${esc(code)}">A/B split</a>`);
  const [entity, specs, runs] = await Promise.all([
    api("GET", `/api/entities/${encodeURIComponent(code)}`), api("GET", "/api/config-specs"),
    api("GET", `/api/entities/${encodeURIComponent(code)}/runs?limit=50`)]);
  const sections = ["business", "technical"].map(sec => `<h3>${sec}</h3><div class="grid">
    ${specs.run.filter(s => s.section === sec).map(configInput).join("")}</div>`).join("");
  main.innerHTML = `
    <section><h2>${esc(entity.entity_code)} — ${esc(entity.name)}</h2><table>
      <tr><th>supply source</th><td>${esc(entity.supply_source)} (${esc(entity.auction_type)})</td></tr>
      <tr><th>optimizer version</th><td>${esc(entity.current_version)} (anchor ${esc(entity.anchor_feature)})</td></tr>
      ${Object.entries(entity.static_configs).map(([k, v]) => `<tr><th>${esc(k)}</th><td>${fmt(v)}</td></tr>`).join("")}
    </table></section>
    <section><h2>Run optimizer</h2>
      ${me.can_write ? `<form id="run-form">${sections}<p><button id="run-submit" type="submit">Run optimizer</button></p>
        <div id="run-message" class="msg"></div></form>` : `<p class="muted">Viewers cannot create runs.</p>`}
    </section>
    <section><h2>Runs</h2><table id="runs-table"><tr><th></th><th>run</th><th>status</th><th>validation</th>
      <th>segments</th><th>bid median</th><th>bid min–max</th><th>win AUC</th><th>ECE</th><th>by</th><th>created</th></tr>
      ${runs.map(r => `<tr data-run="${esc(r.run_id)}"><td><input type="checkbox" class="cmp" value="${esc(r.run_id)}"></td>
        <td><a href="#/run/${esc(r.run_id)}">${esc(r.run_id)}</a></td>
        <td><span class="pill ${esc(r.status)}">${esc(r.status)}</span></td><td>${fmt(r.validation_status)}</td>
        <td>${fmt(r.segments_count)}</td><td>${fmt(r.bid_median)}</td><td>${fmt(r.bid_min)}–${fmt(r.bid_max)}</td>
        <td>${fmt(r.win_auc)}</td><td>${fmt(r.win_ece)}</td><td>${esc(r.triggered_by)}</td><td>${esc(r.created_at)}</td></tr>
        ${r.error_message ? `<tr><td></td><td colspan="10" class="bad">${esc(r.error_message)}</td></tr>` : ""}`).join("")}
    </table><p><button id="compare">Compare selected</button></p></section>`;
  document.getElementById("compare").onclick = () => {
    const ids = [...document.querySelectorAll(".cmp:checked")].map(c => c.value);
    if (ids.length >= 2) location.hash = `#/compare/${ids.join(",")}`;
  };
  const form = document.getElementById("run-form");
  if (form) form.onsubmit = async e => {
    e.preventDefault();
    const configs = {};
    form.querySelectorAll("[data-key]").forEach(el => { configs[el.dataset.key] = el.value; });
    const msg = document.getElementById("run-message");
    try {
      const run = await api("POST", `/api/entities/${encodeURIComponent(code)}/runs`, {configs});
      msg.className = "msg ok";
      msg.innerHTML = `Created pending run <a href="#/run/${esc(run.run_id)}">${esc(run.run_id)}</a>; the optimizer will pick it up.`;
      setTimeout(route, 600);
    } catch (err) { msg.className = "msg bad"; msg.textContent = err.message; }
  };
}

function histogram(values, width = 520, height = 180) {
  if (!values.length) return "<p class='muted'>no bids</p>";
  const lo = Math.min(...values), hi = Math.max(...values), bins = 30, counts = new Array(bins).fill(0);
  values.forEach(v => counts[Math.min(bins - 1, Math.floor((v - lo) / ((hi - lo) || 1) * bins))]++);
  const top = Math.max(...counts), bw = (width - 40) / bins;
  return `<svg width="${width}" height="${height}" id="bid-histogram">${counts.map((c, i) =>
    `<rect x="${30 + i * bw}" y="${height - 20 - c / top * (height - 30)}" width="${bw - 1}" height="${c / top * (height - 30)}" fill="#2456c8"></rect>`).join("")}
    <text x="30" y="${height - 5}">${lo.toFixed(2)}</text><text x="${width - 60}" y="${height - 5}">${hi.toFixed(2)} CPM</text>
    <text x="0" y="12">${top}</text></svg>`;
}

function curvesPlot(curves, width = 520, height = 220) {
  const bids = curves.bids, lx = v => Math.log(v), x0 = lx(bids[0]), x1 = lx(bids[bids.length - 1]);
  const X = v => 35 + (lx(v) - x0) / (x1 - x0) * (width - 45), Y = p => height - 20 - p * (height - 30);
  const colours = ["#2456c8", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#1098ad", "#5c940d", "#e67700"];
  const lines = curves.segments.map((s, i) => `<polyline fill="none" stroke="${colours[i % 8]}" stroke-width="1.5"
    points="${s.win_rate.map((p, j) => `${X(bids[j])},${Y(p)}`).join(" ")}"><title>${esc(s.segment_key)}</title></polyline>`);
  const target = `<line x1="35" x2="${width - 10}" y1="${Y(curves.target_win_rate)}" y2="${Y(curves.target_win_rate)}"
    stroke="#999" stroke-dasharray="4"></line>`;
  const legend = curves.segments.map((s, i) => `<div style="color:${colours[i % 8]}">${esc(s.segment_key)}
    <span class="muted">(${fmt(s.train_bids)} bids)</span></div>`).join("");
  return `<svg width="${width}" height="${height}" id="win-curves">${target}${lines.join("")}
    <text x="0" y="${Y(1) + 4}">1.0</text><text x="0" y="${Y(0)}">0</text>
    <text x="35" y="${height - 4}">${bids[0]} CPM</text><text x="${width - 70}" y="${height - 4}">${bids[bids.length - 1]} CPM</text>
    </svg><div style="font-size:12px">${legend}</div>`;
}

function metricsTable(metrics) {
  return Object.entries(metrics).map(([sec, vals]) => `<h3>${esc(sec)}</h3><table>
    ${Object.entries(vals).map(([k, v]) => `<tr><th>${esc(k)}</th><td>${fmt(v)}</td></tr>`).join("")}</table>`).join("");
}

async function runPage(runId, offset = 0) {
  const run = await api("GET", `/api/runs/${encodeURIComponent(runId)}`);
  crumbs(`/ <a href="#/entity/${esc(run.entity_code)}">${esc(run.entity_code)}</a> / ${esc(run.run_id)}`);
  let plots = "", table = "";
  if (run.status === "completed") {
    const [bids, curves, page] = await Promise.all([
      api("GET", `/api/runs/${encodeURIComponent(runId)}/bids?level=segment&limit=1000`),
      api("GET", `/api/runs/${encodeURIComponent(runId)}/curves`),
      api("GET", `/api/runs/${encodeURIComponent(runId)}/bids?offset=${offset}&limit=50`)]);
    plots = `<div class="cols"><section><h2>Bid distribution (segments)</h2>${histogram(bids.rows.map(r => r.bid_cpm))}</section>
      <section><h2>Win-rate curves of the top segments</h2>${curvesPlot(curves)}</section></div>`;
    table = `<section><h2>Bid table (${fmt(page.total)} rows)</h2><table id="bid-table"><tr><th>segment_key</th><th>level</th>
      <th>bid_cpm</th><th>predicted win rate</th><th>train bids</th><th>explored</th><th>capped</th></tr>
      ${page.rows.map(r => `<tr><td>${esc(r.segment_key)}</td><td>${esc(r.level)}</td><td>${fmt(r.bid_cpm)}</td>
        <td>${fmt(r.predicted_win_rate)}</td><td>${fmt(r.train_bids)}</td><td>${fmt(r.explored)}</td><td>${fmt(r.capped)}</td></tr>`).join("")}
      </table><p>${offset > 0 ? `<button id="prev">previous</button>` : ""}
      ${offset + 50 < page.total ? `<button id="next">next</button>` : ""}</p></section>`;
  }
  main.innerHTML = `<section><h2>Run ${esc(run.run_id)} <span class="pill ${esc(run.status)}">${esc(run.status)}</span></h2>
    <table><tr><th>entity</th><td>${esc(run.entity_code)}</td><th>triggered by</th><td>${esc(run.triggered_by)} (${esc(run.trigger_type)})</td></tr>
    <tr><th>created</th><td>${esc(run.created_at)}</td><th>completed</th><td>${esc(run.completed_at)}</td></tr>
    <tr><th>segments</th><td>${fmt(run.segments_count)}</td><th>bid median (min–max)</th><td>${fmt(run.bid_median)} (${fmt(run.bid_min)}–${fmt(run.bid_max)})</td></tr>
    <tr><th>validation</th><td colspan="3">${fmt(run.validation_status)}<ul>${run.validation_details.map(d =>
      `<li class="${d.startsWith("FAILED") ? "bad" : ""}">${esc(d)}</li>`).join("")}</ul></td></tr>
    ${run.error_message ? `<tr><th>error</th><td colspan="3" class="bad">${esc(run.error_message)}</td></tr>` : ""}
    <tr><th>artifacts</th><td colspan="3">${esc(run.s3_output_path)}</td></tr></table></section>
    ${plots}
    <div class="cols"><section><h2>Features</h2><table><tr><th>#</th><th>feature</th><th>anchor</th><th>signal score</th><th>macro</th></tr>
      ${run.features.map(f => `<tr><td>${f.feature_order}</td><td>${esc(f.feature_name)}</td><td>${fmt(f.is_anchor)}</td>
        <td>${fmt(f.signal_score)}</td><td>${esc(f.macro_template)}</td></tr>`).join("")}</table>
      <h2>Configs</h2>${metricsTable(run.configs)}</section>
    <section><h2>Metrics</h2>${metricsTable(run.metrics)}</section></div>${table}`;
  const prev = document.getElementById("prev"), next = document.getElementById("next");
  if (prev) prev.onclick = () => runPage(runId, Math.max(0, offset - 50));
  if (next) next.onclick = () => runPage(runId, offset + 50);
}

async function comparePage(ids) {
  const runs = await Promise.all(ids.map(id => api("GET", `/api/runs/${encodeURIComponent(id)}`)));
  crumbs(`/ <a href="#/entity/${esc(runs[0].entity_code)}">${esc(runs[0].entity_code)}</a> / compare`);
  const rows = [["status", r => r.status], ["validation", r => r.validation_status], ["segments", r => r.segments_count],
    ["bid median", r => r.bid_median], ["bid min", r => r.bid_min], ["bid max", r => r.bid_max],
    ["features", r => r.features.map(f => f.feature_name).join(" | ")]];
  const keys = new Set();
  runs.forEach(r => Object.entries(r.metrics).forEach(([s, v]) => Object.keys(v).forEach(k => keys.add(`${s}.${k}`))));
  runs.forEach(r => Object.entries(r.configs).forEach(([s, v]) => Object.keys(v).forEach(k => keys.add(`config.${k}`))));
  const value = (r, key) => {
    const [sec, name] = key.split(".");
    if (sec === "config") return r.configs.business?.[name] ?? r.configs.technical?.[name];
    return r.metrics[sec]?.[name];
  };
  main.innerHTML = `<section><h2>Compare runs</h2><table id="compare-table"><tr><th></th>
    ${runs.map(r => `<th><a href="#/run/${esc(r.run_id)}">${esc(r.run_id)}</a></th>`).join("")}</tr>
    ${rows.map(([label, f]) => `<tr><th>${label}</th>${runs.map(r => `<td>${fmt(f(r))}</td>`).join("")}</tr>`).join("")}
    ${[...keys].sort().map(k => {
      const vals = runs.map(r => value(r, k));
      const differs = new Set(vals.map(v => JSON.stringify(v))).size > 1;
      return `<tr class="${differs ? "" : "muted"}"><th>${esc(k)}</th>${vals.map(v => `<td>${fmt(v)}</td>`).join("")}</tr>`;
    }).join("")}</table></section>`;
}

// Whether the active split is what every reporting bidder replica serves; replicas that lag or are
// gone are listed with their reason (their load error, or that they have not refreshed yet).
function bidderLiveness(bidders) {
  const others = bidders.replicas.filter(r => r.state !== "live");
  return `<p>Bidders: <span id="split-live" class="${bidders.live ? "ok" : "bad"}">${esc(bidders.summary)}</span></p>
    ${others.length ? `<table id="split-replicas"><tr><th>replica</th><th>state</th><th>serves split</th><th>last report</th><th>reason</th></tr>
    ${others.map(r => `<tr><td>${esc(r.replica_id)}</td><td class="${r.state === "lagging" ? "bad" : "muted"}">${esc(r.state)}</td>
      <td>${fmt(r.split_id)}</td><td>${fmt(r.seconds_since_report)} s ago</td><td>${esc(r.reason)}</td></tr>`).join("")}</table>` : ""}`;
}

async function abPage(code) {
  const enc = encodeURIComponent(code);
  crumbs(`/ <a href="#/entity/${esc(enc)}">${esc(code)}</a> / A/B split · <a href="#/results/${esc(enc)}">results</a>`);
  const [current, runs, history] = await Promise.all([
    api("GET", `/api/entities/${enc}/split`), api("GET", `/api/entities/${enc}/deployable-runs`),
    api("GET", `/api/entities/${enc}/split/history`)]);
  const pct = Object.fromEntries(current.runs.map(r => [r.run_id, r.traffic_pct]));
  main.innerHTML = `<section><h2>Active split of ${esc(code)}</h2><div id="split-current">${current.runs.length ?
      current.runs.map(r => `<span class="pill">${esc(r.run_id)}: ${r.traffic_pct}%</span>`).join(" ") +
      ` <span class="muted">by ${esc(current.deployed_by)} at ${esc(current.deployed_at)}</span>
      · <a id="results-link" href="#/results/${esc(enc)}/${esc(current.split_id)}">results of this split</a>`
      : "<span class='muted'>none</span>"}</div>
    ${bidderLiveness(current.bidders)}</section>
    <section><h2>New split</h2><p class="muted">Completed runs that passed validation. Whole percentages adding up to 100; 0 leaves a run out.</p>
    <table><tr><th>run</th><th>segments</th><th>bid median</th><th>completed</th><th>traffic %</th></tr>
    ${runs.map(r => `<tr><td><a href="#/run/${esc(r.run_id)}">${esc(r.run_id)}</a></td><td>${fmt(r.segments_count)}</td>
      <td>${fmt(r.bid_median)}</td><td>${esc(r.completed_at)}</td>
      <td><input class="split-input" data-run="${esc(r.run_id)}" size="4" value="${pct[r.run_id] ?? 0}" ${me.can_write ? "" : "disabled"}></td></tr>`).join("")}
    </table><p>Total: <b id="split-total"></b> <span id="split-check"></span></p>
    ${me.can_write ? `<button id="split-save" disabled>Set split</button>` : "<p class='muted'>Viewers cannot change splits.</p>"}
    <div id="split-message" class="msg"></div></section>
    <section><h2>History</h2><table id="split-history"><tr><th>split</th><th>runs</th><th>by</th><th>deployed</th>
      <th>deactivated</th><th>reason</th><th></th></tr>
    ${history.map(h => `<tr data-split="${esc(h.split_id)}" class="${h.is_active ? "" : "muted"}${h.deployed_by === "guardrail" ? " guardrail" : ""}">
      <td>${esc(h.split_id)}${h.is_active ? " (active)" : ""}</td>
      <td>${h.runs.map(r => `${esc(r.run_id)}: ${esc(r.traffic_pct)}%`).join(", ")}</td>
      <td>${h.deployed_by === "guardrail" ? `<span class="pill guardrail">guardrail rollback</span>` : esc(h.deployed_by)}</td>
      <td>${esc(h.deployed_at)}</td><td>${esc(h.deactivated_at)}</td><td>${esc(h.reason)}</td>
      <td><a class="results-link" href="#/results/${esc(enc)}/${esc(h.split_id)}">results</a></td></tr>`).join("")}</table></section>`;
  const inputs = [...document.querySelectorAll(".split-input")];
  const save = document.getElementById("split-save");
  const check = () => {
    let total = 0, ok = true, any = false;
    inputs.forEach(el => {
      const v = el.value.trim(), valid = /^\d+$/.test(v) && Number(v) <= 100;
      el.classList.toggle("invalid", !valid);
      if (!valid) ok = false; else { total += Number(v); if (Number(v) > 0) any = true; }
    });
    document.getElementById("split-total").textContent = `${total}%`;
    const problem = !ok ? "whole numbers from 0 to 100 only" : !any ? "give at least one run traffic"
      : total !== 100 ? `must add up to 100 (${total > 100 ? "over" : "under"} by ${Math.abs(100 - total)})` : "";
    const el = document.getElementById("split-check");
    el.className = problem ? "bad" : "ok";
    el.textContent = problem || "valid";
    if (save) save.disabled = Boolean(problem);
  };
  inputs.forEach(el => el.addEventListener("input", check));
  check();
  if (save) save.onclick = async () => {
    const split = {};
    inputs.forEach(el => { if (Number(el.value) > 0) split[el.dataset.run] = Number(el.value); });
    const msg = document.getElementById("split-message");
    try {
      await api("PUT", `/api/entities/${enc}/split`, {split});
      msg.className = "msg ok"; msg.textContent = "Split saved; bidders pick it up on their next refresh.";
      setTimeout(() => abPage(code), 500);
    } catch (err) { msg.className = "msg bad"; msg.textContent = err.message; }
  };
}

// ------------------------------------------------------------------ A/B results of one split

const ARM_COLOURS = ["#2456c8", "#d9480f", "#2b8a3e", "#862e9c", "#c92a2a", "#1098ad", "#5c940d", "#e67700"];
const armColour = arm => ARM_COLOURS[(Number(arm) || 0) % ARM_COLOURS.length];
const finite = v => typeof v === "number" && Number.isFinite(v);
const asPct = (v, digits = 1) => finite(v) ? `${(v * 100).toFixed(digits)}%` : "–";
const asPoints = v => finite(v) ? `${v >= 0 ? "+" : "−"}${Math.abs(v * 100).toFixed(1)} pp` : "–";
const asMoney = v => !finite(v) ? "–" : Math.abs(v) >= 1 || v === 0
  ? v.toLocaleString("en-US", {minimumFractionDigits: v === 0 ? 0 : 2, maximumFractionDigits: 2}) : v.toPrecision(3);
// the smallest of 1, 2, 2.5, 5 × 10^k at or above v: a plot's top that gives round tick labels
const niceCeil = v => { const k = 10 ** Math.floor(Math.log10(v)); return [1, 2, 2.5, 5, 10].find(m => m * k >= v * 0.9999) * k; };
const signedMoney = v => finite(v) ? `${v >= 0 ? "+" : "−"}${asMoney(Math.abs(v))}` : "–";
const hourLabel = iso => esc(String(iso ?? "").slice(5, 16).replace("T", " "));

// "value [low, high]" of a report interval; "–" where the report has no value (no data)
function ciText(ci, f) {
  if (!ci || !finite(ci.value)) return "–";
  return finite(ci.low) && finite(ci.high) ? `${f(ci.value)}<br><span class="ci">[${f(ci.low)}, ${f(ci.high)}]</span>` : f(ci.value);
}

// The guardrail's view of one arm, by the rules of ``bidopt.guardrails`` and the entity's ``guardrail_*``
// settings: judged on the whole 95% interval, and only past the minimum sample. ``flags`` says why a
// number is off target; ``state`` is waiting, ok or breach. Without the settings (an older server) the
// win rate is flagged when its interval excludes the run's target.
function guardrailView(arm, configs) {
  const c = configs || {}, flags = {}, wr = arm.win_rate || {}, nb = arm.no_bid_share || {}, target = arm.target_win_rate;
  if (!finite(c.guardrail_max_win_rate_gap)) {
    if (finite(target) && finite(wr.low) && finite(wr.high) && (target < wr.low || target > wr.high))
      flags.win_rate = `the target ${asPct(target)} is outside the win rate's 95% interval`;
    return {flags, state: ""};
  }
  const waiting = [];
  if (arm.bids >= c.guardrail_min_bids && arm.wins >= c.guardrail_min_wins) {
    const gap = c.guardrail_max_win_rate_gap;
    if (finite(target) && finite(wr.low) && finite(wr.high) && (wr.low > target + gap || wr.high < target - gap))
      flags.win_rate = `the whole interval is more than ${asPoints(gap).slice(1)} from the target ${asPct(target)}`;
  } else waiting.push(`${fmt(arm.bids)}/${fmt(c.guardrail_min_bids)} bids, ${fmt(arm.wins)}/${fmt(c.guardrail_min_wins)} wins`);
  if (arm.impressions >= c.guardrail_min_bids) {
    if (finite(nb.low) && nb.low > c.guardrail_max_no_bid_share)
      flags.no_bid_share = `the whole interval is above the limit ${asPct(c.guardrail_max_no_bid_share)}`;
  } else waiting.push(`${fmt(arm.impressions)}/${fmt(c.guardrail_min_bids)} impressions`);
  const off = c.guardrail_enabled === false ? " (guardrail off)" : "";
  const state = flags.win_rate || flags.no_bid_share ? `<span class="bad">breach${off}</span>`
    : waiting.length ? `<span class="muted" title="${esc(`judged from ${waiting.join("; ")}`)}">waiting${off}</span>`
    : `<span class="ok">ok${off}</span>`;
  return {flags, state};
}

function flagged(html, why, metric) {
  return why ? `<td data-metric="${metric}" class="flag" title="${esc(why)}">⚠ ${html}</td>` : `<td data-metric="${metric}">${html}</td>`;
}

// The hourly series of each arm as points on the report's hours (one x position per hour).
function armSeries(report) {
  const hours = [...new Set(report.hourly.map(h => h.hour))].sort();
  const at = new Map(report.hourly.map(h => [`${h.arm}|${h.hour}`, h]));
  return {hours, arms: report.arms.map(a => ({arm: a, rows: hours.map(hour => at.get(`${a.arm}|${hour}`) || null)}))};
}

// A time plot of one value per arm and hour: lines broken where an hour has no value, an optional
// interval band behind each line, optional dashed horizontal lines (the targets).
function timePlot(id, hours, lines, {yMax, yFormat, refs = [], width = 560, height = 250}) {
  const left = 52, right = 70, top = 10, bottom = 30, w = width - left - right, h = height - top - bottom;
  const X = i => left + (hours.length === 1 ? w / 2 : i / (hours.length - 1) * w);
  const Y = v => top + h - Math.max(0, Math.min(1, v / yMax)) * h;
  const grid = [0, 0.25, 0.5, 0.75, 1].map(f => `<line x1="${left}" x2="${left + w}" y1="${Y(f * yMax)}" y2="${Y(f * yMax)}" stroke="#eceef2"></line>
    <text x="${left - 6}" y="${Y(f * yMax) + 4}" text-anchor="end">${esc(yFormat(f * yMax))}</text>`).join("");
  const ticks = [...new Set([0, Math.floor((hours.length - 1) / 2), hours.length - 1])].filter(i => i >= 0 && i < hours.length)
    .map(i => `<text x="${X(i)}" y="${height - 8}" text-anchor="middle">${hourLabel(hours[i])}</text>`).join("");
  const body = lines.map(line => {
    const runs = [];  // stretches of consecutive hours with a value: the line breaks at an hour without one
    line.points.forEach((p, i) => {
      if (!p || !finite(p.y)) return;
      const last = runs[runs.length - 1];
      if (last && last.end === i - 1) { last.pts.push([i, p]); last.end = i; } else runs.push({pts: [[i, p]], end: i});
    });
    return runs.map(run => {
      const banded = run.pts.filter(([, p]) => finite(p.low) && finite(p.high));
      const upper = banded.map(([i, p]) => `${X(i)},${Y(p.high)}`), lower = banded.map(([i, p]) => `${X(i)},${Y(p.low)}`);
      const band = banded.length > 1  // the band: along the upper bounds and back along the lower ones
        ? `<path class="band" d="M${upper.join(" L")} L${lower.reverse().join(" L")} Z" fill="${line.colour}" fill-opacity="0.16"
            stroke="none"></path>`
        : banded.map((_, k) => `<path class="band" d="M${upper[k]} L${lower[k]}" stroke="${line.colour}" stroke-opacity="0.3"
            stroke-width="8"></path>`).join("");  // a lone hour: its interval as a bar
      const path = `<path class="line" d="M${run.pts.map(([i, p]) => `${X(i)},${Y(p.y)}`).join(" L")}" fill="none"
        stroke="${line.colour}" stroke-width="2"></path>`;
      const dots = run.pts.map(([i, p]) => `<circle cx="${X(i)}" cy="${Y(p.y)}" r="2.5" fill="${line.colour}">
        <title>${esc(line.label)} ${hourLabel(hours[i])}: ${esc(yFormat(p.y))}</title></circle>`).join("");
      return band + path + dots;
    }).join("");
  }).join("");
  const refLines = refs.filter(r => finite(r.y)).map(r => `<line class="target" x1="${left}" x2="${left + w}" y1="${Y(r.y)}"
    y2="${Y(r.y)}" stroke="${r.colour}" stroke-width="1.5" stroke-dasharray="6 4"></line>
    <text x="${left + w + 4}" y="${Y(r.y) + 4}" style="fill:${r.colour}">${esc(r.label)}</text>`).join("");
  return `<svg id="${id}" width="${width}" height="${height}" role="img">${grid}
    <line x1="${left}" x2="${left}" y1="${top}" y2="${top + h}" stroke="#c8ced8"></line>
    <line x1="${left}" x2="${left + w}" y1="${top + h}" y2="${top + h}" stroke="#c8ced8"></line>${refLines}${body}${ticks}</svg>`;
}

function armLegend(arms) {
  return `<div class="legend">${arms.map(a => `<span><i style="background:${armColour(a.arm)}"></i>arm ${esc(a.arm)} · ${esc(a.run_id)}
    (${esc(a.traffic_pct)}%)</span>`).join("")}</div>`;
}

function winRatePlot(report) {
  const {hours, arms} = armSeries(report);
  const lines = arms.map(({arm, rows}) => ({colour: armColour(arm.arm), label: `arm ${arm.arm}`,
    points: rows.map(r => r && r.win_rate ? {y: r.win_rate.value, low: r.win_rate.low, high: r.win_rate.high} : null)}));
  const highs = report.hourly.flatMap(r => [r.win_rate?.high, r.win_rate?.value]).concat(report.arms.map(a => a.target_win_rate)).filter(finite);
  const yMax = Math.min(1, niceCeil(Math.max(0.05, ...highs) * 1.05));
  const refs = report.arms.map(a => ({y: a.target_win_rate, colour: armColour(a.arm), label: `target ${asPct(a.target_win_rate, 0)}`}));
  return timePlot("winrate-plot", hours, lines, {yMax, yFormat: v => asPct(v, 0), refs});
}

function spendPlot(report) {
  const {hours, arms} = armSeries(report);
  const lines = arms.map(({arm, rows}) => {
    let total = 0;  // an hour without a row of the arm spent nothing: the cumulative sum carries on
    return {colour: armColour(arm.arm), label: `arm ${arm.arm}`,
      points: rows.map(r => { if (r && finite(r.cumulative_spend)) total = r.cumulative_spend; return {y: total}; })};
  });
  const top = Math.max(0, ...report.hourly.map(r => r.cumulative_spend).filter(finite));
  return timePlot("spend-plot", hours, lines, {yMax: top > 0 ? niceCeil(top * 1.05) : 1, yFormat: asMoney});
}

const COMPARISON_FORMAT = {win_rate: asPoints, ctr: asPoints, ecpm: signedMoney};

function comparisonsTable(report) {
  const run = id => report.arms.find(a => a.run_id === id);
  const rows = report.comparisons.map(c => {
    const f = COMPARISON_FORMAT[c.metric] || (v => fmt(v));
    const a = run(c.run_a), b = run(c.run_b);
    const diff = finite(c.difference) ? `${f(c.difference)}${finite(c.low) && finite(c.high) ? `<br><span class="ci">[${f(c.low)}, ${f(c.high)}]</span>` : ""}`
      : "<span class='muted'>not enough data</span>";
    const p = !finite(c.p_value) ? "–" : c.p_value < 1e-4 ? "&lt; 0.0001" : c.p_value.toFixed(4);
    return `<tr data-metric="${esc(c.metric)}"><td>${esc(c.metric.replace("_", " "))}</td>
      <td>${b ? `arm ${esc(b.arm)} ` : ""}<b>${esc(c.run_b)}</b><br>− ${a ? `arm ${esc(a.arm)} ` : ""}<b>${esc(c.run_a)}</b></td>
      <td>${diff}</td><td>${p}</td>
      <td>${c.significant ? `<span class="pill sig">significant</span>` : `<span class="pill">not significant</span>`}</td>
      <td class="muted">${esc(c.method)}</td></tr>`;
  }).join("");
  return rows ? `<table id="comparisons" class="results"><tr><th>metric</th><th>difference of</th><th>difference [95% CI]</th><th>p-value</th><th></th><th>method</th></tr>${rows}</table>`
    : "<p class='muted'>A comparison needs two arms.</p>";
}

async function resultsPage(code, splitId) {
  const enc = encodeURIComponent(code);
  crumbs(`/ <a href="#/entity/${esc(enc)}">${esc(code)}</a> / <a href="#/ab/${esc(enc)}">A/B split</a> / results`);
  if (splitId !== null && !/^\d+$/.test(splitId)) throw new Error(`split must be a whole number, got ${splitId}`);
  const [report, history, entity] = await Promise.all([
    api("GET", `/api/entities/${enc}/report${splitId === null ? "" : `?split=${encodeURIComponent(splitId)}`}`),
    api("GET", `/api/entities/${enc}/split/history`), api("GET", `/api/entities/${enc}`)]);
  const empty = !report.hourly.length && report.arms.every(a => !a.requests && !a.impressions);
  const guardrail = report.deployed_by === "guardrail";
  const rejected = Object.entries(report.notices_rejected || {}).filter(([, n]) => n);
  const arms = report.arms.map(a => {
    const {flags, state} = guardrailView(a, entity.static_configs);
    const at100 = report.is_active && a.traffic_pct === 100;
    const promote = !me.can_write ? `<button class="promote" disabled title="Viewers cannot promote runs">Promote to 100%</button>`
      : `<button class="promote" data-run="${esc(a.run_id)}" ${at100 ? "disabled title='already at 100%'" : ""}>Promote to 100%</button>`;
    return `<tr data-arm="${esc(a.arm)}" data-run="${esc(a.run_id)}">
      <td><i class="swatch" style="background:${armColour(a.arm)}"></i>${esc(a.arm)}<br><span class="ci" data-metric="traffic_pct">${fmt(a.traffic_pct)}%</span></td>
      <td><a data-metric="run_id" href="#/run/${esc(encodeURIComponent(a.run_id))}">${esc(a.run_id)}</a><br>${promote}</td>
      <td data-metric="requests">${fmt(a.requests)}</td><td data-metric="bids">${fmt(a.bids)}</td><td data-metric="wins">${fmt(a.wins)}</td>
      ${flagged(ciText(a.win_rate, asPct), flags.win_rate, "win_rate")}
      ${flagged(`${asPoints(a.win_rate_gap)}<br><span class="ci" data-metric="target_win_rate">target ${asPct(a.target_win_rate)}</span>`,
        flags.win_rate, "win_rate_gap")}
      <td data-metric="spend">${ciText(a.spend, asMoney)}</td><td data-metric="ecpm">${ciText(a.ecpm, asMoney)}</td>
      <td data-metric="clicks">${fmt(a.clicks)}</td><td data-metric="ctr">${ciText(a.ctr, v => asPct(v, 2))}</td>
      <td data-metric="ecpc">${ciText(a.ecpc, asMoney)}</td>
      ${flagged(ciText(a.no_bid_share, asPct), flags.no_bid_share, "no_bid_share")}<td data-metric="guardrail">${state}</td></tr>`;
  }).join("");
  main.innerHTML = `<section id="results-head"><h2>Results of split ${esc(report.split_id)} of ${esc(code)}
      <span class="pill ${report.is_active ? "completed" : ""}">${report.is_active ? "active" : "past"}</span>
      ${guardrail ? `<span class="pill guardrail">guardrail rollback</span>` : ""}</h2>
    <p>Deployed by <b id="results-deployed-by">${esc(report.deployed_by)}</b> at ${esc(report.deployed_at)}${report.deactivated_at
      ? `, deactivated at ${esc(report.deactivated_at)}` : ""}.
      ${report.reason ? `<br>Reason: <span id="results-reason" class="${guardrail ? "bad" : ""}">${esc(report.reason)}</span>` : ""}</p>
    <p class="muted">${report.window?.start ? `Events from ${esc(report.window.start)} to ${esc(report.window.end)}` : "No events yet"}.
      Other splits: <select id="split-select">${history.map(h => `<option value="${esc(h.split_id)}" ${h.split_id === report.split_id ? "selected" : ""}>
        ${esc(h.split_id)}${h.is_active ? " (active)" : ""}${h.deployed_by === "guardrail" ? " guardrail" : ""}</option>`).join("")}</select></p>
    <p id="results-excluded" class="muted">Not counted: <span data-metric="test_requests_excluded">${fmt(report.test_requests_excluded)}</span> test requests,
      <span data-metric="duplicates_dropped">${fmt(report.duplicates_dropped)}</span> duplicate notices dropped${finite(report.orphan_notices)
        ? `, <span data-metric="orphan_notices">${fmt(report.orphan_notices)}</span> notices matching no bid` : ""}; notices rejected:
      ${rejected.length ? rejected.map(([k, n]) => `<span class="pill" data-reason="${esc(k)}">${esc(k)}: ${fmt(n)}</span>`).join(" ") : "none"}.</p>
    ${empty ? `<p id="no-traffic" class="msg">No traffic recorded for this split yet.</p>` : ""}</section>
    <section><h2>Arms</h2><div class="scroll"><table id="arms-table" class="results"><tr><th>arm</th><th>run</th><th>requests</th><th>bids</th><th>wins</th><th>win rate</th><th>gap to target</th><th>spend</th>
      <th>eCPM</th><th>clicks</th><th>CTR</th><th>eCPC</th><th>no-bid</th><th>guardrail</th></tr>${arms}</table></div>
      <p class="muted">Arm with its traffic share. Win rate = wins / bids; spend in currency units (clearing CPM / 1000); eCPM = spend per 1000 won impressions;
      CTR = clicks / wins; eCPC = spend / click; no-bid = share of impressions not bid on; [95% intervals]. ⚠ marks a number off target by the entity's guardrail.</p>
      <div id="promote-message" class="msg"></div></section>
    ${empty ? "" : `<section><h2>Comparisons</h2>${comparisonsTable(report)}</section>
    <div class="cols"><section><h2>Win rate per hour, 95% band; dashed: target</h2>${winRatePlot(report)}${armLegend(report.arms)}</section>
      <section><h2>Cumulative spend</h2>${spendPlot(report)}${armLegend(report.arms)}</section></div>`}`;
  document.getElementById("split-select").onchange = e => { location.hash = `#/results/${enc}/${e.target.value}`; };
  document.querySelectorAll("button.promote[data-run]").forEach(btn => btn.onclick = async () => {
    const runId = btn.dataset.run, msg = document.getElementById("promote-message");
    if (!confirm(`Put run ${runId} at 100% of ${code}'s traffic? This replaces the active split.`)) return;
    document.querySelectorAll("button.promote").forEach(b => { b.disabled = true; });
    try {
      const split = await api("POST", `/api/entities/${enc}/promote`, {run_id: runId});
      msg.className = "msg ok";
      msg.innerHTML = `Promoted: new split ${esc(split.split_id)} is ${split.runs.map(r => `<span class="pill">${esc(r.run_id)}: ${esc(r.traffic_pct)}%</span>`).join(" ")};
        bidders follow on their next refresh. <a href="#/ab/${esc(enc)}">A/B page</a> ·
        <a href="#/results/${esc(enc)}/${esc(split.split_id)}">results of the new split</a>`;
    } catch (err) {
      msg.className = "msg bad"; msg.textContent = err.message;
      document.querySelectorAll("button.promote[data-run]").forEach(b => { b.disabled = false; });
    }
  });
}

route();
