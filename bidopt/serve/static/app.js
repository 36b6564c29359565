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
    const [, page, arg] = (location.hash || "#/").split("/");
    if (page === "entity") await entityPage(decodeURIComponent(arg));
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
  crumbs(`/ <a href="#/entity/${esc(code)}">${esc(code)}</a> / A/B split`);
  const enc = encodeURIComponent(code);
  const [current, runs, history] = await Promise.all([
    api("GET", `/api/entities/${enc}/split`), api("GET", `/api/entities/${enc}/deployable-runs`),
    api("GET", `/api/entities/${enc}/split/history`)]);
  const pct = Object.fromEntries(current.runs.map(r => [r.run_id, r.traffic_pct]));
  main.innerHTML = `<section><h2>Active split of ${esc(code)}</h2><div id="split-current">${current.runs.length ?
      current.runs.map(r => `<span class="pill">${esc(r.run_id)}: ${r.traffic_pct}%</span>`).join(" ") +
      ` <span class="muted">by ${esc(current.deployed_by)} at ${esc(current.deployed_at)}</span>` : "<span class='muted'>none</span>"}</div>
    ${bidderLiveness(current.bidders)}</section>
    <section><h2>New split</h2><p class="muted">Completed runs that passed validation. Whole percentages adding up to 100; 0 leaves a run out.</p>
    <table><tr><th>run</th><th>segments</th><th>bid median</th><th>completed</th><th>traffic %</th></tr>
    ${runs.map(r => `<tr><td><a href="#/run/${esc(r.run_id)}">${esc(r.run_id)}</a></td><td>${fmt(r.segments_count)}</td>
      <td>${fmt(r.bid_median)}</td><td>${esc(r.completed_at)}</td>
      <td><input class="split-input" data-run="${esc(r.run_id)}" size="4" value="${pct[r.run_id] ?? 0}" ${me.can_write ? "" : "disabled"}></td></tr>`).join("")}
    </table><p>Total: <b id="split-total"></b> <span id="split-check"></span></p>
    ${me.can_write ? `<button id="split-save" disabled>Set split</button>` : "<p class='muted'>Viewers cannot change splits.</p>"}
    <div id="split-message" class="msg"></div></section>
    <section><h2>History</h2><table id="split-history"><tr><th>split</th><th>runs</th><th>by</th><th>deployed</th><th>deactivated</th></tr>
    ${history.map(h => `<tr class="${h.is_active ? "" : "muted"}"><td>${h.split_id}${h.is_active ? " (active)" : ""}</td>
      <td>${h.runs.map(r => `${esc(r.run_id)}: ${r.traffic_pct}%`).join(", ")}</td><td>${esc(h.deployed_by)}</td>
      <td>${esc(h.deployed_at)}</td><td>${esc(h.deactivated_at)}</td></tr>`).join("")}</table></section>`;
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

route();
