/* Tokenomy dashboard: fetches /dashboard/api/* and draws with the bundled Chart.js. No network beyond the gateway. */
"use strict";

const DIMENSIONS = ["model", "team", "feature", "customer", "endpoint", "tag", "traffic_class", "provider",
  "model_asked", "org", "key", "cache_status", "outcome"];
const PALETTE = ["#2f6fde", "#e8743b", "#19a979", "#ed4a7b", "#945ecf", "#13a4b4", "#525df4", "#bf399e", "#6c8893", "#ee6868"];
const NONE = "(none)";

const state = { since: "30d", step: "day", split: "model", breakdownBy: "team", filters: {} };
const charts = {};
// Exposed for tests and for people poking around in the console.
window.tokenomyDashboard = { state, charts, data: {}, loaded: false };

const $ = (id) => document.getElementById(id);
const usd = (v) => v === null || v === undefined ? "unknown" :
  "$" + (Math.abs(v) >= 100 ? v.toLocaleString("en-US", { maximumFractionDigits: 0 }) :
    Math.abs(v) >= 1 ? v.toFixed(2) : v.toFixed(4));
const int = (v) => (v || 0).toLocaleString("en-US");
const pct = (v) => v === null || v === undefined || isNaN(v) ? "–" : (100 * v).toFixed(1) + "%";

function params(extra) {
  const p = new URLSearchParams({ since: state.since });
  for (const [k, v] of Object.entries(state.filters)) p.set(k, v);
  for (const [k, v] of Object.entries(extra || {})) p.set(k, v);
  return p.toString();
}

async function api(path, extra) {
  const answer = await fetch(`/dashboard/api/${path}?${params(extra)}`, { credentials: "same-origin" });
  if (answer.status === 401) { window.location = "/dashboard"; throw new Error("logged out"); }
  if (!answer.ok) throw new Error(`${path}: ${answer.status}`);
  return answer.json();
}

function chart(id, config) {
  if (charts[id]) charts[id].destroy();
  config.options = Object.assign({ responsive: true, maintainAspectRatio: false, animation: false }, config.options || {});
  charts[id] = new Chart($(id), config);
  return charts[id];
}

function cell(text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; return td; }
function fillTable(id, rows, render) {
  const body = document.querySelector(`#${id} tbody`);
  body.replaceChildren(...rows.map((row) => { const tr = document.createElement("tr"); render(row, tr); return tr; }));
}

async function loadSummary() {
  const s = await api("summary");
  window.tokenomyDashboard.data.summary = s;
  $("kpi-cost").textContent = usd(s.cost_usd);
  $("kpi-baseline").textContent = usd(s.baseline_usd);
  $("kpi-savings").textContent = usd(s.savings_usd) + (s.baseline_usd ? ` (${pct(s.savings_usd / s.baseline_usd)})` : "");
  $("kpi-requests").textContent = int(s.requests);
  $("kpi-tokens").textContent = `${int(s.input_tokens)} / ${int(s.output_tokens)}`;
  $("kpi-cache").textContent = s.cache_lookups ? pct(s.cache_hits / s.cache_lookups) : "no cache";
  $("kpi-routed").textContent = int(s.routed);
  $("kpi-errors").textContent = int(s.errors);
  $("kpi-unknown").textContent = int(s.unknown_cost_count);
}

async function loadTimeseries() {
  const ts = await api("timeseries", { by: state.split, step: state.step });
  window.tokenomyDashboard.data.timeseries = ts;
  $("split-label").textContent = `by ${state.split.replace("_", " ")}`;
  const labels = ts.buckets.map((b) => state.step === "day" ? b.t.slice(0, 10) : b.t.slice(0, 13).replace("T", " ") + "h");
  const datasets = ts.groups.map((g, i) => ({
    label: g, backgroundColor: PALETTE[i % PALETTE.length], stack: "cost",
    data: ts.buckets.map((b) => (b.groups[g] ? b.groups[g].cost_usd : 0)),
  }));
  chart("chart-spend", { type: "bar", data: { labels, datasets },
    options: { scales: { x: { stacked: true }, y: { stacked: true, title: { display: true, text: "USD" } } } } });
  const sum = (b, key) => Object.values(b.groups).reduce((a, c) => a + c[key], 0);
  chart("chart-baseline", { type: "line", data: { labels, datasets: [
    { label: "baseline", borderColor: "#6c8893", backgroundColor: "#6c889333", fill: true, data: ts.buckets.map((b) => sum(b, "baseline_usd")) },
    { label: "actual", borderColor: "#2f6fde", backgroundColor: "#2f6fde55", fill: true, data: ts.buckets.map((b) => sum(b, "cost_usd")) },
  ] }, options: { scales: { y: { title: { display: true, text: "USD" } } } } });
}

async function loadSavings() {
  const s = await api("savings");
  window.tokenomyDashboard.data.savings = s;
  // Calls are attributed to cache / routing / batch / other; token techniques (pruning,
  // compression, prompt caching…) are what the ledger's per-call savings say, shown beside them.
  const tokens = s.token_techniques || [];
  const labels = [...s.techniques.map((t) => t.technique), ...tokens.map((t) => `tokens: ${t.technique}`)];
  chart("chart-savings", { type: "bar", data: { labels,
    datasets: [{ label: "saved (USD)", data: [...s.techniques.map((t) => t.savings_usd), ...tokens.map((t) => t.savings_usd)],
      backgroundColor: labels.map((l) => l.startsWith("tokens:") ? "#945ecf" : "#19a979") }],
  }, options: { plugins: { legend: { display: false } } } });
}

async function loadBreakdown() {
  const by = state.breakdownBy;
  const b = await api("breakdown", { by, limit: 25 });
  window.tokenomyDashboard.data.breakdown = b;
  const top = b.groups.slice(0, 10);
  chart("chart-breakdown", { type: "bar", data: { labels: top.map((g) => g.group),
    datasets: [{ label: "cost (USD)", backgroundColor: "#2f6fde", data: top.map((g) => g.cost_usd) },
               { label: "baseline (USD)", backgroundColor: "#c5cad6", data: top.map((g) => g.baseline_usd) }] },
    options: { indexAxis: "y" } });
  fillTable("breakdown-table", b.groups, (g, tr) => {
    const name = cell(g.group, "text"); name.title = "filter on this value"; name.style.cursor = "pointer";
    name.onclick = () => { state.filters[by] = g.group; refresh(); };
    tr.append(name, cell(int(g.requests)), cell(usd(g.cost_usd)), cell(usd(g.baseline_usd)), cell(usd(g.savings_usd)),
      cell(int(g.input_tokens)), cell(int(g.output_tokens)), cell(g.cache_lookups ? pct(g.cache_hits / g.cache_lookups) : "–"));
  });
  $("breakdown-csv").href = `/dashboard/api/breakdown?${params({ by, format: "csv", limit: 10000 })}`;
  const daily = ["customer", "tag", "key"].includes(by) && !Object.keys(state.filters).length;
  $("breakdown-note").textContent = (by === "tag" ? "A call with several tags counts in each. " : "") +
    (daily ? "Breakdowns by customer, tag and key are by whole UTC day." : "");
}

async function loadCache() {
  const b = await api("breakdown", { by: "cache_status" });
  window.tokenomyDashboard.data.cache = b;
  const looked = b.groups.filter((g) => g.group !== NONE && g.group !== "none");
  $("cache-note").textContent = looked.length ? "" : "No call consulted a cache in this window (caching off or not yet deployed).";
  chart("chart-cache", { type: "doughnut", data: { labels: b.groups.map((g) => g.group),
    datasets: [{ data: b.groups.map((g) => g.requests), backgroundColor: b.groups.map((_, i) => PALETTE[i % PALETTE.length]) }] } });
}

async function loadRouting() {
  const r = await api("routing");
  window.tokenomyDashboard.data.routing = r;
  fillTable("routing-table", r.routes, (row, tr) => tr.append(cell(row.model_asked, "text"), cell(row.model_served, "text"),
    cell(int(row.requests)), cell(usd(row.cost_usd)), cell(usd(row.savings_usd))));
  const routed = r.routes.some((x) => x.model_asked !== x.model_served && x.model_served !== NONE);
  $("routing-note").textContent = routed ? "" : "Every call was served by the model it asked for.";
}

async function loadBudgets() {
  const b = await api("budgets");
  window.tokenomyDashboard.data.budgets = b;
  $("budgets-card").hidden = !b.budgets || !b.budgets.length;
  if (!b.budgets) return;
  fillTable("budgets-table", b.budgets, (x, tr) => tr.append(cell(`${x.scope} ${x.value}`, "text"), cell(x.period || ""),
    cell(usd(x.amount_usd)), cell(x.spent_usd === null ? "–" : usd(x.spent_usd)), cell(pct(x.used_fraction)),
    cell(x.burn_usd_per_day ? usd(x.burn_usd_per_day) : "–"), cell(x.projected_exhaustion ? x.projected_exhaustion.slice(0, 16).replace("T", " ") : "not this period")));
}

async function loadRequests() {
  const r = await api("requests", { order: "cost", limit: 25 });
  window.tokenomyDashboard.data.requests = r;
  fillTable("requests-table", r.requests, (x, tr) => {
    tr.dataset.requestId = x.request_id;
    tr.onclick = () => showRequest(x.request_id);
    tr.append(cell(x.created_at.slice(0, 19).replace("T", " "), "text"), cell(x.request_id, "text"),
      cell(`${x.model_asked} → ${x.model_served || NONE}`, "text"), cell(x.team || NONE, "text"), cell(x.feature || NONE, "text"),
      cell(x.customer || NONE, "text"), cell(`${int(x.input_tokens)} / ${int(x.output_tokens)}`), cell(usd(x.cost_usd)),
      cell(usd(x.baseline_usd)), cell(x.cache_status, "text"), cell(x.outcome, "text"));
  });
  $("requests-csv").href = `/dashboard/api/requests?${params({ order: "cost", format: "csv", limit: 1000 })}`;
}

async function showRequest(id) {
  const answer = await fetch(`/dashboard/api/requests/${encodeURIComponent(id)}`, { credentials: "same-origin" });
  const row = await answer.json();
  $("detail-id").textContent = id;
  const shown = ["created_at", "model_asked", "model_served", "provider", "api", "kind", "stream", "team", "feature",
    "customer", "endpoint", "tags", "traffic_class", "key_id", "org", "cost_usd", "baseline_usd", "savings_usd",
    "input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens", "cache_status", "outcome", "status",
    "error_message", "duration_ms", "upstream_ms", "route"];
  const dl = $("detail-fields"); dl.replaceChildren();
  for (const key of shown) {
    if (!(key in row)) continue;  // fields added by later features appear when the ledger has them
    const dt = document.createElement("dt"); dt.textContent = key;
    const dd = document.createElement("dd");
    const v = row[key];
    dd.textContent = key.endsWith("_usd") ? usd(v) : Array.isArray(v) ? v.join(", ") : v === null ? "–" : String(v);
    dl.append(dt, dd);
  }
  fillTable("detail-items", row.cost_items || [], (i, tr) => tr.append(cell(i.step, "text"), cell(i.model, "text"),
    cell(i.provider || "", "text"), cell(int(i.input_tokens)), cell(int(i.output_tokens)), cell(int(i.cached_tokens)), cell(usd(i.usd))));
  fillTable("detail-stages", Object.entries(row.stage_ms || {}), ([k, v], tr) => tr.append(cell(k, "text"), cell(Number(v).toFixed(3))));
  $("detail").showModal();
}

function renderFilters() {
  const holder = $("filters"); holder.replaceChildren();
  for (const [k, v] of Object.entries(state.filters)) {
    const chip = document.createElement("span"); chip.className = "chip"; chip.textContent = `${k}=${v} ✕`;
    chip.title = "remove filter"; chip.onclick = () => { delete state.filters[k]; refresh(); };
    holder.append(chip);
  }
}

async function loadDimensionValues() {
  const d = await api("dimensions");
  window.tokenomyDashboard.data.dimensions = d.dimensions;
  fillFilterValues();
}

function fillFilterValues() {
  const values = (window.tokenomyDashboard.data.dimensions || {})[$("filter-dim").value] || [];
  $("filter-value").replaceChildren(...["", ...values].map((v) => new Option(v || "(any)", v)));
}

async function refresh() {
  window.tokenomyDashboard.loaded = false;
  document.body.dataset.loaded = "0";
  renderFilters();
  try {
    await Promise.all([loadSummary(), loadTimeseries(), loadSavings(), loadBreakdown(), loadCache(), loadRouting(),
      loadBudgets(), loadRequests(), loadDimensionValues()]);
    window.tokenomyDashboard.loaded = true;
    document.body.dataset.loaded = "1";
  } catch (err) {
    window.tokenomyDashboard.error = String(err);
    document.body.dataset.loaded = "error";
    console.error(err);
  }
}

function setup() {
  for (const select of document.querySelectorAll(".dimension-select")) {
    select.replaceChildren(...DIMENSIONS.map((d) => new Option(d.replace("_", " "), d)));
  }
  $("split").value = state.split;
  $("breakdown-by").value = state.breakdownBy;
  $("filter-dim").value = "team";
  $("since").onchange = (e) => { state.since = e.target.value; refresh(); };
  $("step").onchange = (e) => { state.step = e.target.value; loadTimeseries(); };
  $("split").onchange = (e) => { state.split = e.target.value; loadTimeseries(); };
  $("breakdown-by").onchange = (e) => { state.breakdownBy = e.target.value; loadBreakdown(); };
  $("filter-dim").onchange = fillFilterValues;
  $("add-filter").onclick = () => {
    const value = $("filter-value").value;
    if (value) { state.filters[$("filter-dim").value] = value; refresh(); }
  };
  refresh();
}

setup();
