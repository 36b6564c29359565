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
    else if (page === "catalogue") await cataloguePage();
    else if (page === "audit") await auditPage(arg ? decodeURIComponent(arg) : "");
    else if (page === "status") await statusPage(arg ? decodeURIComponent(arg) : "");
    else await entitiesPage();
    showFlash();
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
    ${entities.map(e => `<tr data-entity="${esc(e.entity_code)}" class="${e.is_active === false ? "muted" : ""}">
      <td><a href="#/entity/${esc(e.entity_code)}">${esc(e.entity_code)}</a>${e.is_active === false ? ` <span class="pill">inactive</span>` : ""}</td>
      <td>${esc(e.name)}</td><td>${esc(e.supply_source)} (${esc(e.auction_type)})</td><td>${esc(e.current_version)}</td>
      <td>${fmt(e.static_configs.floor_available)}</td><td>${fmt(e.static_configs.npi_enabled)}</td>
      <td>${fmt(e.static_configs.domain_enabled)}</td></tr>`).join("")}</table></section>
    ${me.can_admin ? "<section id='new-entity'></section>" : ""}`;
  if (me.can_admin) await newEntityForm(document.getElementById("new-entity"));
}

function configInput(spec, prefix = "cfg", value = spec.default) {
  const id = `${prefix}-${spec.key}`;
  if (spec.value_type === "bool")
    return `<label>${esc(spec.key)}<select id="${id}" data-key="${esc(spec.key)}" title="${esc(spec.description)}">
      <option value="false" ${value ? "" : "selected"}>false</option>
      <option value="true" ${value ? "selected" : ""}>true</option></select></label>`;
  if (spec.choices.length)
    return `<label>${esc(spec.key)}<select id="${id}" data-key="${esc(spec.key)}" title="${esc(spec.description)}">
      ${spec.choices.map(c => `<option ${c === value ? "selected" : ""}>${esc(c)}</option>`).join("")}</select></label>`;
  return `<label>${esc(spec.key)} <span class="muted">${esc(spec.description)}</span>
    <input id="${id}" data-key="${esc(spec.key)}" value="${esc(value)}"></label>`;
}

async function entityPage(code) {
  crumbs(`/ <a href="#/entity/${esc(code)}">${esc(code)}</a> · <a href="#/ab/${esc(code)}">A/B split</a>
    · <a href="#/audit/${esc(encodeURIComponent(code))}">audit</a>`);
  const [entity, specs, runs] = await Promise.all([
    api("GET", `/api/entities/${encodeURIComponent(code)}`), api("GET", "/api/config-specs"),
    api("GET", `/api/entities/${encodeURIComponent(code)}/runs?limit=50`)]);
  const sections = ["business", "technical"].map(sec => `<h3>${sec}</h3><div class="grid">
    ${specs.run.filter(s => s.section === sec).map(s => configInput(s)).join("")}</div>`).join("");
  main.innerHTML = `
    <section><h2>${esc(entity.entity_code)} — ${esc(entity.name)}${entity.is_active === false
      ? ` <span class="pill" id="entity-inactive">inactive: not served, no new runs</span>` : ""}</h2><table>
      <tr><th>supply source</th><td>${esc(entity.supply_source)} (${esc(entity.auction_type)})</td></tr>
      <tr><th>optimizer version</th><td>${esc(entity.current_version)} (anchor ${esc(entity.anchor_feature)})</td></tr>
      <tr><th>artifact base path</th><td>${esc(entity.base_path)}</td></tr>
      ${Object.entries(entity.static_configs).map(([k, v]) => `<tr><th>${esc(k)}</th><td>${fmt(v)}</td></tr>`).join("")}
    </table></section>
    ${me.can_admin ? "<section id='entity-admin'></section>" : ""}
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
  if (me.can_admin) await entityAdmin(document.getElementById("entity-admin"), entity, specs);
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
    ${plots}${run.status === "completed" ? replaySection(run) : ""}
    <div class="cols"><section><h2>Features</h2><table><tr><th>#</th><th>feature</th><th>anchor</th><th>signal score</th><th>macro</th></tr>
      ${run.features.map(f => `<tr><td>${f.feature_order}</td><td>${esc(f.feature_name)}</td><td>${fmt(f.is_anchor)}</td>
        <td>${fmt(f.signal_score)}</td><td>${esc(f.macro_template)}</td></tr>`).join("")}</table>
      <h2>Configs</h2>${metricsTable(run.configs)}</section>
    <section><h2>Metrics</h2>${metricsTable(run.metrics)}</section></div>${table}`;
  const prev = document.getElementById("prev"), next = document.getElementById("next");
  if (prev) prev.onclick = () => runPage(runId, Math.max(0, offset - 50));
  if (next) next.onclick = () => runPage(runId, offset + 50);
  wireReplay(runId);
}

// Offline replay of the run (GET /api/runs/{id}/replay): the entity's logged requests priced by this
// run and the runs it is compared with, as a bidder would; computed on request (it takes seconds).
function replaySection(run) {
  return `<section id="replay"><h2>Offline replay</h2>
    <p class="muted">Replays the entity's logged requests through this run and the active split's runs (or the runs named
    here) exactly as a bidder would price them; win rates from each run's own win model.</p>
    <form id="replay-form"><label>compare with (run ids, blank: the active split)<input name="against" size="40"></label>
    <label>window<select name="window"><option value="all">the run's window</option><option value="training">its training rows</option>
    <option value="holdout">its held-out slice</option></select></label> <button id="replay-run" type="submit">Replay</button></form>
    <div id="replay-msg" class="msg"></div><div id="replay-out"></div></section>`;
}

function replayBars(id, runs, value, {yMax, yFormat, width = 300, height = 180}) {
  const left = 48, top = 10, bottom = 34, h = height - top - bottom, slot = (width - left - 10) / Math.max(1, runs.length);
  const Y = v => top + h - Math.max(0, Math.min(1, v / yMax)) * h;
  const grid = [0, 0.5, 1].map(f => `<line x1="${left}" x2="${width - 10}" y1="${Y(f * yMax)}" y2="${Y(f * yMax)}" stroke="#eceef2"></line>
    <text x="${left - 6}" y="${Y(f * yMax) + 4}" text-anchor="end">${esc(yFormat(f * yMax))}</text>`).join("");
  const bars = runs.map((r, i) => {
    const v = value(r), x = left + i * slot + slot * 0.2;
    return finite(v) ? `<rect class="bar" data-run="${esc(r.run_id)}" x="${x}" y="${Y(v)}" width="${slot * 0.6}" height="${top + h - Y(v)}"
      fill="${armColour(i)}"><title>${esc(r.run_id)}: ${esc(yFormat(v))}</title></rect>
      <text x="${x + slot * 0.3}" y="${Y(v) - 3}" text-anchor="middle">${esc(yFormat(v))}</text>` : "";
  }).join("");
  const labels = runs.map((r, i) => `<text x="${left + i * slot + slot / 2}" y="${height - 18}" text-anchor="middle">${esc(r.run_id.slice(-8))}</text>
    <text x="${left + i * slot + slot / 2}" y="${height - 5}" text-anchor="middle">${esc(r.role)}</text>`).join("");
  return `<svg id="${id}" width="${width}" height="${height}" role="img">${grid}${bars}${labels}</svg>`;
}

function replayView(view) {
  const runs = view.runs, t = r => r.total;
  const rows = runs.map((r, i) => `<tr data-run="${esc(r.run_id)}"><td><i class="swatch" style="background:${armColour(i)}"></i>
    <a href="#/run/${esc(r.run_id)}">${esc(r.run_id)}</a></td><td>${esc(r.role)}${r.traffic_pct !== null ? ` (${r.traffic_pct}%)` : ""}</td>
    <td>${fmt(t(r).requests)}</td><td>${fmt(t(r).bids)}</td><td data-metric="bid_share">${asPct(t(r).bid_share)}</td>
    <td data-metric="expected_win_rate">${asPct(t(r).expected_win_rate)}</td>
    <td data-metric="expected_priced_win_rate">${asPct(t(r).expected_priced_win_rate)}</td><td>${asMoney(t(r).expected_spend)}</td>
    <td data-metric="ecpm">${asMoney(t(r).ecpm)}</td><td>${fmt(t(r).mean_bid_cpm)}</td></tr>`).join("");
  const ecpmMax = niceCeil(Math.max(0.01, ...runs.map(r => t(r).ecpm).filter(finite)) * 1.1);
  const first = runs[0];
  const segs = first.segments.map(s => `<tr><td>${esc(s.segment_key)}</td><td>${esc(s.level)}</td><td>${fmt(s.requests)}</td>
    <td>${asPct(s.bid_share)}</td><td>${asPct(s.expected_win_rate)}</td><td>${asMoney(s.expected_spend)}</td><td>${asMoney(s.ecpm)}</td>
    <td>${fmt(s.mean_bid_cpm)}</td></tr>`).join("");
  return `<p>${fmt(view.requests)} logged requests of ${esc(view.entity_code)}, ${esc(view.since)} .. ${esc(view.until)}
    <span class="muted">(${esc(view.engine)}, ${fmt(view.seconds)} s; spend: ${esc(view.spend_model)})</span></p>
    <table id="replay-table" class="results"><tr><th>run</th><th>role</th><th>requests</th><th>bids</th><th>bid share</th>
    <th>expected win rate</th><th title="expected wins / requests: the floor no-bids count as losses, as in the target">expected
    priced win rate</th><th>expected spend</th><th>eCPM</th><th>mean bid CPM</th></tr>${rows}</table>
    <div class="cols" style="grid-template-columns: repeat(3, 1fr)">
    <div><h3>bid share</h3>${replayBars("replay-bid-share", runs, r => t(r).bid_share, {yMax: 1, yFormat: v => asPct(v, 0)})}</div>
    <div><h3>expected win rate</h3>${replayBars("replay-win-rate", runs, r => t(r).expected_win_rate, {yMax: 1, yFormat: v => asPct(v, 0)})}</div>
    <div><h3>eCPM</h3>${replayBars("replay-ecpm", runs, r => t(r).ecpm, {yMax: ecpmMax, yFormat: asMoney})}</div></div>
    <h3>${esc(first.run_id)}: the ${first.segments.length} biggest of ${fmt(first.segment_count)} keys</h3>
    <div class="scroll"><table id="replay-segments" class="results"><tr><th>segment key</th><th>level</th><th>requests</th><th>bid share</th>
    <th>expected win rate</th><th>expected spend</th><th>eCPM</th><th>mean bid CPM</th></tr>${segs}</table></div>`;
}

function wireReplay(runId) {
  const form = document.getElementById("replay-form");
  if (!form) return;
  form.onsubmit = async ev => {
    ev.preventDefault();
    const msg = document.getElementById("replay-msg"), out = document.getElementById("replay-out");
    const button = document.getElementById("replay-run");
    const params = new URLSearchParams({window: form.elements.window.value, top: "20"});
    form.elements.against.value.split(/[\s,]+/).filter(Boolean).forEach(id => params.append("against", id));
    button.disabled = true; msg.className = "msg muted"; msg.textContent = "replaying…";
    try {
      out.innerHTML = replayView(await api("GET", `/api/runs/${encodeURIComponent(runId)}/replay?${params}`));
      msg.textContent = "";
    } catch (e) { msg.className = "msg bad"; msg.textContent = e.message; }
    button.disabled = false;
  };
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

// ------------------------------------------------------------------ the catalogue (admins write)

let flash = null;  // {id, html}: the message of a write, shown in its form once the page has redrawn

function showFlash() {
  const el = flash && document.getElementById(flash.id);
  if (el) { el.className = "msg ok"; el.innerHTML = flash.html; }
  flash = null;
}

// The form's [data-field] values, trimmed; `keep` = false leaves empty ones out (optional fields).
function fields(form, keep = true) {
  const out = {};
  form.querySelectorAll("[data-field]").forEach(el => {
    const v = el.value.trim();
    if (keep || v !== "") out[el.dataset.field] = v;
  });
  return out;
}

// The values that differ from `before` (what an edit form sends); an emptied description is null.
function changes(values, before) {
  const out = {};
  Object.entries(values).forEach(([k, v]) => {
    if (v !== String(before[k] ?? "")) out[k] = k === "description" && v === "" ? null : v;
  });
  return out;
}

// A form's write: `send()` returns the API's answer (null: nothing to send). A refusal shows the
// server's error in the form's message box and keeps what was typed; a success redraws the page
// (route) and shows `done(answer)` there.
function onWrite(form, msgId, send, done) {
  form.onsubmit = async e => {
    e.preventDefault();
    const msg = document.getElementById(msgId), button = form.querySelector("button[type=submit]");
    if (button) button.disabled = true;
    let answer;
    try { answer = await send(); } catch (err) {
      msg.className = "msg bad"; msg.textContent = err.message;
      if (button) button.disabled = false;
      return;
    }
    if (button) button.disabled = false;
    if (answer === null) { msg.className = "msg muted"; msg.textContent = "Nothing changed."; return; }
    flash = {id: msgId, html: done(answer)};
    await route();
  };
}

// A button's write (deactivate, reactivate): confirmed first, its error or result in `msgId`.
function onAction(button, msgId, question, send, done) {
  button.onclick = async () => {
    if (question && !confirm(question)) return;
    const msg = document.getElementById(msgId);
    let answer;
    try { answer = await send(); } catch (err) { msg.className = "msg bad"; msg.textContent = err.message; return; }
    flash = {id: msgId, html: done(answer)};
    await route();
  };
}

const options = (values, selected) => values.map(v => `<option ${v === selected ? "selected" : ""}>${esc(v)}</option>`).join("");
const activePill = active => active ? `<span class="pill completed">active</span>` : `<span class="pill">inactive</span>`;

async function newEntityForm(section) {
  const [sources, versions, specs] = await Promise.all([
    api("GET", "/api/sources"), api("GET", "/api/versions"), api("GET", "/api/config-specs")]);
  const active = sources.filter(s => s.is_active).map(s => s.source_code);
  section.innerHTML = `<h2>New entity</h2>
    <p class="muted">An advertiser line on an active supply source and an optimizer version whose anchor feature has an
      active macro in that source. Static configs are typed and range-checked like run configs.</p>
    <form id="entity-form"><div class="grid">
      <label>code <span class="muted">lower case, digits, _ and -</span><input id="new-entity-code" data-field="code"></label>
      <label>name<input id="new-entity-name" data-field="name"></label>
      <label>supply source<select id="new-entity-source" data-field="source">${options(active)}</select></label>
      <label>optimizer version<select id="new-entity-version" data-field="version">
        ${options(versions.map(v => v.version_name), versions.length ? versions[versions.length - 1].version_name : null)}</select></label>
      <label>artifact base path <span class="muted">default: the code</span><input id="new-entity-base_path" data-field="base_path"></label>
    </div><h3>Static configs</h3><div class="grid">${specs.static.map(s => configInput(s, "new-entity-cfg")).join("")}</div>
    <p><button id="entity-submit" type="submit">Create entity</button></p><div id="entity-message" class="msg"></div></form>`;
  const form = document.getElementById("entity-form");
  onWrite(form, "entity-message", () => {
    const configs = {};
    form.querySelectorAll("[data-key]").forEach(el => { configs[el.dataset.key] = el.value; });
    return api("POST", "/api/entities", {...fields(form, false), configs});
  }, e => `Created entity <a href="#/entity/${esc(encodeURIComponent(e.entity_code))}">${esc(e.entity_code)}</a>
    (${esc(e.supply_source)}, version ${esc(e.current_version)}).`);
}

async function entityAdmin(section, entity, specs) {
  const enc = encodeURIComponent(entity.entity_code);
  const versions = await api("GET", "/api/versions");
  section.innerHTML = `<h2>Administration</h2>
    <form id="static-form"><h3>Static configs</h3><div class="grid">
      ${specs.static.map(s => configInput(s, "static", entity.static_configs[s.key])).join("")}</div>
      <p><button id="static-submit" type="submit">Save static configs</button></p><div id="static-message" class="msg"></div></form>
    <form id="entity-edit-form"><h3>Name and artifact path</h3><div class="grid">
      <label>name<input id="edit-entity-name" data-field="name" value="${esc(entity.name)}"></label>
      <label>artifact base path<input id="edit-entity-base_path" data-field="base_path" value="${esc(entity.base_path)}"></label></div>
      <p><button id="entity-edit-submit" type="submit">Save</button></p><div id="entity-edit-message" class="msg"></div></form>
    <form id="use-version-form"><h3>Optimizer version</h3>
      <p class="muted">The version new runs are made with; runs keep the version they were made with.</p>
      <select id="use-version-select">${options(versions.map(v => v.version_name), entity.current_version)}</select>
      <button id="use-version-submit" type="submit">Use version</button><div id="use-version-message" class="msg"></div></form>
    <h3>Deactivate</h3>${entity.is_active === false ? `<p class="muted">Inactive: not served, new runs are refused.</p>`
      : `<p class="muted">Bidders stop serving its split within one refresh; new runs are refused.</p>
      <button id="entity-deactivate">Deactivate ${esc(entity.entity_code)}</button>`}<div id="deactivate-message" class="msg"></div>`;
  const staticForm = document.getElementById("static-form");
  onWrite(staticForm, "static-message", () => {
    const configs = {};
    staticForm.querySelectorAll("[data-key]").forEach(el => {
      if (el.value !== String(entity.static_configs[el.dataset.key])) configs[el.dataset.key] = el.value;
    });
    return Object.keys(configs).length ? api("PUT", `/api/entities/${enc}/configs`, {configs}) : null;
  }, () => "Static configs saved.");
  const editForm = document.getElementById("entity-edit-form");
  onWrite(editForm, "entity-edit-message", () => {
    const changed = changes(fields(editForm), entity);
    return Object.keys(changed).length ? api("PATCH", `/api/entities/${enc}`, changed) : null;
  }, () => "Saved.");
  onWrite(document.getElementById("use-version-form"), "use-version-message", () => {
    const version = document.getElementById("use-version-select").value;
    return version === entity.current_version ? null : api("PUT", `/api/entities/${enc}/version`, {version});
  }, e => `New runs use version ${esc(e.current_version)} (anchor ${esc(e.anchor_feature)}).`);
  const deactivate = document.getElementById("entity-deactivate");
  if (deactivate) onAction(deactivate, "deactivate-message",
    `Deactivate ${entity.entity_code}? Bidders stop serving it and new runs are refused.`,
    () => api("POST", `/api/entities/${enc}/deactivate`), () => "Deactivated.");
}

async function cataloguePage() {
  crumbs("/ catalogue");
  const [sources, macros, versions] = await Promise.all([
    api("GET", "/api/sources"), api("GET", "/api/macros"), api("GET", "/api/versions")]);
  const admin = me.can_admin, features = [...new Set(macros.map(m => m.feature_name))].sort();
  const macroRows = code => macros.filter(m => m.source_code === code).map(m => `
    <tr data-source="${esc(m.source_code)}" data-feature="${esc(m.feature_name)}" class="${m.status === "active" ? "" : "muted"}">
      <td>${esc(m.feature_name)}</td><td><code>${esc(m.macro_template)}</code></td><td><code>${esc(m.request_field)}</code></td>
      <td>${activePill(m.status === "active")}</td><td>${esc(m.description)}</td>
      ${admin ? `<td><button class="promote edit-macro">edit</button>
        ${m.status === "active" ? `<button class="promote deactivate-macro">deactivate</button>`
          : `<button class="promote activate-macro">activate</button>`}</td>` : ""}</tr>`).join("");
  main.innerHTML = `<section><h2>Supply sources</h2>
    <table id="sources-table"><tr><th>source</th><th>name</th><th>type</th><th>auction</th><th>macro namespace</th>
      <th>entities</th><th>status</th>${admin ? "<th></th>" : ""}</tr>
    ${sources.map(s => `<tr data-source="${esc(s.source_code)}" class="${s.is_active ? "" : "muted"}"><td><b>${esc(s.source_code)}</b></td>
      <td>${esc(s.name)}</td><td>${esc(s.source_type)}</td><td>${esc(s.auction_type)}</td><td>${esc(s.macro_namespace)}</td>
      <td>${s.entities.map(c => `<a href="#/entity/${esc(encodeURIComponent(c))}">${esc(c)}</a>`).join(", ") || "–"}</td>
      <td>${activePill(s.is_active)}</td>
      ${admin ? `<td><button class="promote edit-source">edit</button>
        ${s.is_active ? `<button class="promote deactivate-source">deactivate</button>` : ""}</td>` : ""}</tr>`).join("")}</table>
    <div id="sources-message" class="msg"></div></section>
    <section><h2>Feature macros</h2><p class="muted">How each segment feature is read from a bid request of the source:
      the macro template and the request field (dotted paths, <code>|</code> between alternatives).</p>
    ${sources.map(s => `<h3>${esc(s.source_code)}</h3><table class="macros-table" data-source="${esc(s.source_code)}">
      <tr><th>feature</th><th>template</th><th>request field</th><th>status</th><th>description</th>${admin ? "<th></th>" : ""}</tr>
      ${macroRows(s.source_code) || `<tr><td colspan="6" class="muted">no macros</td></tr>`}</table>`).join("")}
    <div id="macros-message" class="msg"></div></section>
    <section><h2>Optimizer versions</h2><p class="muted">Immutable: a change is a new version.</p>
    <table id="versions-table"><tr><th>version</th><th>anchor</th><th>min win AUC</th><th>max ECE</th><th>min bid coverage</th>
      <th>runs</th><th>entities</th><th>created</th><th>description</th></tr>
    ${versions.map(v => `<tr data-version="${esc(v.version_name)}"><td><b>${esc(v.version_name)}</b></td><td>${esc(v.anchor_feature)}</td>
      <td>${fmt(v.min_win_auc)}</td><td>${fmt(v.max_win_ece)}</td><td>${fmt(v.min_bid_coverage)}</td><td>${fmt(v.runs)}</td>
      <td>${v.entities.map(c => esc(c)).join(", ") || "–"}</td><td>${esc(v.created_at)}</td><td>${esc(v.description)}</td></tr>`).join("")}
    </table></section>
    ${admin ? `<div class="cols"><section><form id="source-form"><h2 id="source-form-title">New supply source</h2><div class="grid">
        <label>code<input id="source-code" data-field="code"></label><label>name<input id="source-name" data-field="name"></label>
        <label>type<select id="source-type" data-field="source_type">${options(["exchange", "ssp"])}</select></label>
        <label>auction<select id="source-auction" data-field="auction_type">${options(["first_price", "second_price"])}</select></label>
        <label>macro namespace <span class="muted">e.g. ADX</span><input id="source-namespace" data-field="macro_namespace"></label></div>
        <p><button id="source-submit" type="submit">Create source</button> <button type="button" id="source-cancel" hidden>cancel</button></p>
        <div id="source-message" class="msg"></div></form></section>
      <section><form id="macro-form"><h2 id="macro-form-title">New feature macro</h2><div class="grid">
        <label>supply source<select id="macro-source" data-field="source">${options(sources.filter(s => s.is_active).map(s => s.source_code))}</select></label>
        <label>feature<input id="macro-feature" data-field="feature" list="known-features"></label>
        <datalist id="known-features">${features.map(f => `<option value="${esc(f)}">`).join("")}</datalist>
        <label>template <span class="muted">e.g. [ADX_GEO_STATE]</span><input id="macro-template" data-field="template"></label>
        <label>request field <span class="muted">e.g. site.domain|app.bundle</span><input id="macro-field" data-field="request_field"></label>
        <label>description<input id="macro-description" data-field="description"></label></div>
        <p><button id="macro-submit" type="submit">Create macro</button> <button type="button" id="macro-cancel" hidden>cancel</button></p>
        <div id="macro-message" class="msg"></div></form></section></div>
      <section><form id="version-create-form"><h2>New optimizer version</h2><div class="grid">
        <label>name<input id="version-name" data-field="name"></label>
        <label>anchor feature<input id="version-anchor" data-field="anchor_feature" list="known-features" value="geo_region_name"></label>
        <label>min win AUC <span class="muted">0.5 to 1</span><input id="version-min_win_auc" data-field="min_win_auc"></label>
        <label>max ECE <span class="muted">above 0, at most 1</span><input id="version-max_win_ece" data-field="max_win_ece"></label>
        <label>min bid coverage <span class="muted">0 to 1</span><input id="version-min_bid_coverage" data-field="min_bid_coverage"></label>
        <label>description<input id="version-description" data-field="description"></label></div>
        <p><button id="version-submit" type="submit">Create version</button></p><div id="version-message" class="msg"></div></form></section>`
      : `<p class="muted">Only admins change the catalogue.</p>`}`;
  if (!admin) return;
  ["source-cancel", "macro-cancel"].forEach(id => { document.getElementById(id).onclick = () => route(); });

  const sourceForm = document.getElementById("source-form");
  let editingSource = null;  // the source view being changed, or null: the form creates
  onWrite(sourceForm, "source-message", () => {
    if (!editingSource) return api("POST", "/api/sources", fields(sourceForm));
    const changed = changes(fields(sourceForm), {...editingSource, code: editingSource.source_code});
    return Object.keys(changed).length ? api("PATCH", `/api/sources/${encodeURIComponent(editingSource.source_code)}`, changed) : null;
  }, s => `${editingSource ? "Changed" : "Created"} supply source ${esc(s.source_code)}.`);
  document.querySelectorAll("#sources-table button.edit-source").forEach(b => b.onclick = () => {
    editingSource = sources.find(s => s.source_code === b.closest("tr").dataset.source);
    const set = (id, v) => { document.getElementById(id).value = v ?? ""; };
    set("source-code", editingSource.source_code); set("source-name", editingSource.name);
    set("source-type", editingSource.source_type); set("source-auction", editingSource.auction_type);
    set("source-namespace", editingSource.macro_namespace);
    document.getElementById("source-code").readOnly = true;
    document.getElementById("source-form-title").textContent = `Change supply source ${editingSource.source_code}`;
    document.getElementById("source-submit").textContent = "Save source";
    document.getElementById("source-cancel").hidden = false;
    sourceForm.scrollIntoView();
  });
  document.querySelectorAll("#sources-table button.deactivate-source").forEach(b => {
    const code = b.closest("tr").dataset.source;
    onAction(b, "sources-message", `Deactivate supply source ${code}?`,
      () => api("POST", `/api/sources/${encodeURIComponent(code)}/deactivate`), () => `Deactivated supply source ${esc(code)}.`);
  });

  const macroForm = document.getElementById("macro-form");
  let editingMacro = null;  // the macro view being changed, or null: the form creates
  onWrite(macroForm, "macro-message", () => {
    const values = fields(macroForm);
    if (!editingMacro) return api("POST", "/api/macros", fields(macroForm, false));
    delete values.source; delete values.feature;
    const changed = changes(values, {template: editingMacro.macro_template, request_field: editingMacro.request_field,
      description: editingMacro.description});
    return Object.keys(changed).length ? api("PATCH", `/api/macros/${encodeURIComponent(editingMacro.source_code)}/${
      encodeURIComponent(editingMacro.feature_name)}`, changed) : null;
  }, m => `${editingMacro ? "Changed" : "Created"} macro ${esc(m.macro_template)} (${esc(m.source_code)} ${esc(m.feature_name)}).`);
  const macroOf = b => { const tr = b.closest("tr"); return macros.find(m => m.source_code === tr.dataset.source && m.feature_name === tr.dataset.feature); };
  document.querySelectorAll(".macros-table button.edit-macro").forEach(b => b.onclick = () => {
    editingMacro = macroOf(b);
    const source = document.getElementById("macro-source");
    if (![...source.options].some(o => o.value === editingMacro.source_code)) source.add(new Option(editingMacro.source_code));
    source.value = editingMacro.source_code; source.disabled = true;
    const feature = document.getElementById("macro-feature");
    feature.value = editingMacro.feature_name; feature.readOnly = true;
    document.getElementById("macro-template").value = editingMacro.macro_template;
    document.getElementById("macro-field").value = editingMacro.request_field;
    document.getElementById("macro-description").value = editingMacro.description ?? "";
    document.getElementById("macro-form-title").textContent = `Change macro ${editingMacro.source_code} ${editingMacro.feature_name}`;
    document.getElementById("macro-submit").textContent = "Save macro";
    document.getElementById("macro-cancel").hidden = false;
    macroForm.scrollIntoView();
  });
  document.querySelectorAll(".macros-table button.deactivate-macro").forEach(b => {
    const m = macroOf(b), path = `/api/macros/${encodeURIComponent(m.source_code)}/${encodeURIComponent(m.feature_name)}`;
    onAction(b, "macros-message", `Deactivate macro ${m.macro_template}? New runs stop using ${m.feature_name} for ${m.source_code}.`,
      () => api("POST", `${path}/deactivate`), r => `Deactivated macro ${esc(r.macro_template)}. ${esc(r.note)}`);
  });
  document.querySelectorAll(".macros-table button.activate-macro").forEach(b => {
    const m = macroOf(b), path = `/api/macros/${encodeURIComponent(m.source_code)}/${encodeURIComponent(m.feature_name)}`;
    onAction(b, "macros-message", null, () => api("PATCH", path, {status: "active"}), r => `Reactivated macro ${esc(r.macro_template)}.`);
  });

  const versionForm = document.getElementById("version-create-form");
  onWrite(versionForm, "version-message", () => api("POST", "/api/versions", fields(versionForm, false)),
    v => `Created version ${esc(v.version_name)} (anchor ${esc(v.anchor_feature)}).`);
}

// old/new of an audit row: the fields that changed, one per line (a nested dict's as key.subkey)
function auditValues(d, prefix = "") {
  if (!d) return "–";
  return Object.entries(d).map(([k, v]) => v && typeof v === "object" && !Array.isArray(v) ? auditValues(v, `${prefix}${k}.`)
    : `${esc(prefix + k)}: <code>${esc(JSON.stringify(v))}</code>`).join("<br>");
}

async function auditPage(entity) {
  crumbs(`/ audit${entity ? ` of <a href="#/entity/${esc(encodeURIComponent(entity))}">${esc(entity)}</a>` : ""}`);
  const [rows, entities] = await Promise.all([
    api("GET", `/api/audit?limit=500${entity ? `&entity=${encodeURIComponent(entity)}` : ""}`), api("GET", "/api/entities")]);
  main.innerHTML = `<section><h2>Audit</h2><p class="muted">Every catalogue and traffic-split change, newest first: who, when,
    what changed, old and new values.</p>
    <p><label style="display:inline-flex">entity <select id="audit-entity"><option value="">all entities and the catalogue</option>
      ${options(entities.map(e => e.entity_code), entity)}</select></label></p>
    <table id="audit-table"><tr><th>at</th><th>by</th><th>action</th><th>object</th><th>entity</th><th>old</th><th>new</th></tr>
    ${rows.map(r => `<tr data-audit="${esc(r.audit_id)}" data-action="${esc(r.action)}" data-entity="${esc(r.entity_code)}">
      <td class="nowrap">${esc(r.at)}</td><td>${esc(r.actor)}</td><td><span class="pill">${esc(r.action)}</span></td>
      <td>${esc(r.object_type)} ${esc(r.object_key)}</td><td>${esc(r.entity_code)}</td>
      <td>${auditValues(r.old)}</td><td>${auditValues(r.new)}</td></tr>`).join("")}</table>
    ${rows.length ? "" : `<p class="muted" id="audit-empty">No changes recorded${entity ? ` for ${esc(entity)}` : ""}.</p>`}</section>`;
  document.getElementById("audit-entity").onchange = e => {
    location.hash = e.target.value ? `#/audit/${encodeURIComponent(e.target.value)}` : "#/audit";
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
  // judged on the priced win rate (floor no-bids count as losses, as the target counts them)
  const c = configs || {}, flags = {}, wr = arm.priced_win_rate || arm.win_rate || {}, nb = arm.no_bid_share || {}, target = arm.target_win_rate;
  const priced = arm.bids + (arm.floor_no_bids || 0);
  if (!finite(c.guardrail_max_win_rate_gap)) {
    if (finite(target) && finite(wr.low) && finite(wr.high) && (target < wr.low || target > wr.high))
      flags.win_rate = `the target ${asPct(target)} is outside the win rate's 95% interval`;
    return {flags, state: ""};
  }
  const waiting = [];
  if (priced >= c.guardrail_min_bids && Math.max(arm.wins, (finite(target) ? target : 0) * priced) >= c.guardrail_min_wins) {
    const gap = c.guardrail_max_win_rate_gap;
    if (finite(target) && finite(wr.low) && finite(wr.high) && (wr.low > target + gap || wr.high < target - gap))
      flags.win_rate = `the whole interval is more than ${asPoints(gap).slice(1)} from the target ${asPct(target)}`;
  } else waiting.push(`${fmt(priced)}/${fmt(c.guardrail_min_bids)} bids (with floor no-bids), ${fmt(arm.wins)}/${fmt(c.guardrail_min_wins)} wins`);
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

// the rate on the target's basis (floor no-bids as losses: bidopt.readout), the one the dashed target
// lines and the guardrail mean; a report from before it had only the per-bid rate
const targetBasisRate = r => r && (r.priced_win_rate || r.win_rate);

function winRatePlot(report) {
  const {hours, arms} = armSeries(report);
  const lines = arms.map(({arm, rows}) => ({colour: armColour(arm.arm), label: `arm ${arm.arm}`,
    points: rows.map(r => { const w = targetBasisRate(r); return w ? {y: w.value, low: w.low, high: w.high} : null; })}));
  const highs = report.hourly.flatMap(r => [targetBasisRate(r)?.high, targetBasisRate(r)?.value]).concat(report.arms.map(a => a.target_win_rate)).filter(finite);
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
      <td data-metric="win_rate">${ciText(a.win_rate, asPct)}</td>
      ${flagged(`${asPoints(a.win_rate_gap)}<br><span class="ci" data-metric="target_win_rate">target ${asPct(a.target_win_rate)}</span>`
        + (a.floor_no_bids ? `<br><span class="ci" data-metric="priced_win_rate">priced ${ciText(a.priced_win_rate, asPct)}, <span data-metric="floor_no_bids">${fmt(a.floor_no_bids)}</span> floor no-bids</span>` : ""),
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
      <p class="muted">Arm with its traffic share. Win rate = wins / bids; gap to target = priced win rate − target, the priced
      win rate counting the impressions whose floor the run's price did not clear as losses, as the target does; spend in currency units (clearing CPM / 1000); eCPM = spend per 1000 won impressions;
      CTR = clicks / wins; eCPC = spend / click; no-bid = share of impressions not bid on; [95% intervals]. ⚠ marks a number off target by the entity's guardrail (the win rate: its gap to target, judged on the priced win rate's interval).</p>
      <div id="promote-message" class="msg"></div></section>
    ${empty ? "" : `<section><h2>Comparisons</h2>${comparisonsTable(report)}</section>
    <div class="cols"><section><h2>Win rate per hour on the target's basis (floor no-bids as losses), 95% band; dashed: target</h2>${winRatePlot(report)}${armLegend(report.arms)}</section>
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

// #/status[/entity]: GET /api/status (bidopt.status.status, as `bidopt status`).
function rate(v) { return v === null || v === undefined ? "–" : `${fmt(v)}/s`; }

function statusTraffic(t) {
  if (!t.replicas) return `<p class="muted traffic-none">No traffic counted: no reporting replica has seen a request for it.</p>`;
  const reasons = Object.entries(t.no_bids_by_reason);
  return `<table class="status-traffic"><tr><th>over the last</th><th>replicas</th><th>requests</th><th>bids</th>
    <th>no-bids</th><th>bid share</th></tr>
    <tr><td>${fmt(t.window_seconds)} s</td><td>${fmt(t.replicas)}</td>
    <td data-metric="requests_per_second">${rate(t.requests_per_second)} <span class="muted">(${fmt(t.requests)})</span></td>
    <td data-metric="bids_per_second">${rate(t.bids_per_second)} <span class="muted">(${fmt(t.bids)})</span></td>
    <td data-metric="no_bids_per_second">${rate(t.no_bids_per_second)} <span class="muted">(${fmt(t.no_bids)})</span></td>
    <td>${t.bid_share === null ? "–" : `${fmt(100 * t.bid_share, 3)}%`}</td></tr></table>
    ${reasons.length ? `<table class="status-reasons"><tr><th>no-bid reason</th><th>rate</th><th>count</th></tr>
    ${reasons.map(([r, n]) => `<tr data-reason="${esc(r)}"><td>${esc(r)}</td>
      <td>${rate(t.no_bids_per_second_by_reason[r])}</td><td>${fmt(n)}</td></tr>`).join("")}</table>` : ""}`;
}

function statusReplicas(replicas) {
  if (!replicas.length) return `<p class="muted">No bidder replica is reporting.</p>`;
  return `<table class="status-replicas"><tr><th>replica</th><th>host (pid)</th><th>state</th><th>serves split</th>
    <th>loaded</th><th>last report</th><th>note</th></tr>
    ${replicas.map(r => `<tr data-replica="${esc(r.replica_id)}"><td>${esc(r.replica_id)}</td>
      <td>${esc(r.hostname)} (${esc(r.pid)})</td>
      <td class="${r.state === "live" ? "ok" : r.state === "lagging" ? "bad" : "muted"}">${esc(r.state)}</td>
      <td>${fmt(r.split_id)}</td><td>${fmt(r.loaded_at)}</td>
      <td>${fmt(r.reported_at)} <span class="muted">(${fmt(r.seconds_since_report)} s ago)</span></td>
      <td>${esc(r.error || r.reason || "")}</td></tr>`).join("")}</table>`;
}

async function statusPage(entity) {
  crumbs(`/ status${entity ? ` of <a href="#/entity/${esc(encodeURIComponent(entity))}">${esc(entity)}</a>` : ""}`);
  const view = await api("GET", `/api/status${entity ? `?entity=${encodeURIComponent(entity)}` : ""}`);
  const sections = view.entities.map(e => {
    const enc = encodeURIComponent(e.entity_code);
    const split = e.split ? e.split.runs.map(r => `<span class="pill">${esc(r.run_id)}: ${r.traffic_pct}%</span>`).join(" ") +
      ` <span class="muted">split ${esc(e.split.split_id)} by ${esc(e.split.deployed_by)} at ${esc(e.split.deployed_at)}</span>`
      : `<span class="muted">none: the bidders answer no-bid (no_split)</span>`;
    return `<section class="status-entity" data-entity="${esc(e.entity_code)}">
      <h2><a href="#/status/${esc(enc)}">${esc(e.entity_code)}</a>${e.is_active ? "" : ` <span class="pill">inactive</span>`}
        <span class="muted" style="font-weight:400">· <a href="#/ab/${esc(enc)}">A/B split</a></span></h2>
      <p>Active split: <span class="status-split">${split}</span></p>
      <p>Bidders: <span class="status-live ${e.bidders.live ? "ok" : "bad"}">${esc(e.bidders.summary)}</span></p>
      ${statusTraffic(e.traffic)}${statusReplicas(e.replicas)}</section>`;
  });
  const others = Object.entries(view.other_traffic).map(([label, t]) =>
    `<section class="status-other" data-entity="${esc(label)}"><h2>${esc(label)} <span class="muted" style="font-weight:400">(not an active entity)</span></h2>
      ${statusTraffic(t)}</section>`);
  main.innerHTML = `<section><h2>Status</h2><p class="muted">From the bidder replicas' own reports
    (${fmt(view.replicas_counted)} counted) at ${esc(view.generated_at)}; rates over each replica's last minutes.
    <button id="status-refresh">Refresh</button></p></section>
    ${sections.join("") || `<section class="muted">No active entity.</section>`}${others.join("")}`;
  document.getElementById("status-refresh").onclick = () => route();
}

route();
