// cascache dashboard: polls /dashboard/api/summary and draws everything as inline SVG.
//
// No libraries and no CDN: the gateway may run where nothing else can be reached. The session cookie
// set at sign-in goes with every fetch (same origin); the admin token itself is never visible here.
// The server keeps no history, so the time series are the snapshots this page has polled: a chart
// starts filling from the moment the page opens (Grafana has the long view).
// Every figure that comes straight from the registry is written into an element with
// data-metric="<name>" and its exact value in data-value, so a test can compare it with /metrics.
"use strict";

const POLL_MS = 2000;
const ENTRIES_POLL_MS = 10000;
const WINDOW_S = 60;        // hit-rate points: share of the requests in the trailing window
const HISTORY_S = 15 * 60;  // how much history the charts keep
const SVG_NS = "http://www.w3.org/2000/svg";
const TIERS = [
  ["hit-exact", "exact"], ["hit-semantic", "semantic"], ["coalesced", "coalesced"],
  ["miss", "miss"], ["bypass", "bypass"],
];
const FROM_CACHE = ["hit-exact", "hit-semantic", "coalesced"];

const history = [];  // {t: seconds, requests: {tier: count}, saved: usd, spent: usd}

// ---- formatting ----------------------------------------------------------------------------------

const integer = new Intl.NumberFormat("en-US", {maximumFractionDigits: 0});

function fmtCount(value) { return integer.format(value); }
function fmtUsd(value) { return "$" + value.toFixed(6); }
function fmtPercent(value) { return (100 * value).toFixed(value < 0.1 ? 2 : 1) + "%"; }
function fmtSeconds(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 0.001) return (seconds * 1e6).toFixed(0) + " µs";
  if (seconds < 1) return (seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1) + " ms";
  return seconds.toFixed(2) + " s";
}
function fmtAge(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  if (seconds < 120) return seconds.toFixed(0) + " s";
  if (seconds < 7200) return (seconds / 60).toFixed(0) + " min";
  if (seconds < 172800) return (seconds / 3600).toFixed(1) + " h";
  return (seconds / 86400).toFixed(1) + " d";
}
function fmtClock(t) { return new Date(t * 1000).toLocaleTimeString("en-GB", {hour12: false}); }

// ---- DOM helpers (textContent only: entry queries are user text and must never become markup) -------

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A cell (or any element) that shows a registry figure, with the raw value kept for tests. */
function metricCell(tag, name, value, text) {
  const node = el(tag, {"data-metric": name, "data-value": String(value)}, text);
  return node;
}

function setMetric(name, value, text) {
  const node = document.querySelector(`[data-metric="${name}"]`);
  node.dataset.value = String(value);
  node.textContent = text;
}

function fillRows(tbody, rows) {
  tbody.replaceChildren(...rows.map((cells) => {
    const tr = el("tr");
    for (const cell of cells) tr.append(typeof cell === "string" ? el("td", {}, cell) : cell);
    return tr;
  }));
}

function viewBox(svg) {
  const [, , width, height] = svg.getAttribute("viewBox").split(" ").map(Number);
  return {width, height};
}

function emptyChart(svg, message) {
  const {width, height} = viewBox(svg);
  svg.replaceChildren(svgEl("text", {x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty"}, message));
}

// ---- charts ------------------------------------------------------------------------------------------

/**
 * Lines over time. series: [{cls, points: [[t, value|null]]}]; a null value breaks the line, and a lone
 * point still shows as a dot. yMax fixes the scale (shares: 1); otherwise it follows the data.
 */
function lineChart(svg, series, {yMax, yFormat}) {
  const {width, height} = viewBox(svg);
  const times = series.flatMap((s) => s.points.map((p) => p[0]));
  const values = series.flatMap((s) => s.points.map((p) => p[1])).filter((v) => v !== null);
  if (values.length === 0) { emptyChart(svg, "waiting for traffic…"); return; }
  const t1 = Math.max(...times);
  const t0 = Math.min(Math.min(...times), t1 - 30);
  const top = yMax !== undefined ? yMax : Math.max(...values) * 1.15 || 1;
  const yLabels = [0, 1, 2, 3, 4].map((i) => yFormat(top * i / 4));
  // The left margin fits the widest y label (11px text: about 6.5px a character).
  const pad = {left: 12 + 6.5 * Math.max(...yLabels.map((label) => label.length)), right: 12, top: 10, bottom: 24};
  const x = (t) => pad.left + (width - pad.left - pad.right) * (t - t0) / (t1 - t0);
  const y = (v) => height - pad.bottom - (height - pad.top - pad.bottom) * v / top;
  const nodes = [];
  yLabels.forEach((label, i) => {
    const v = top * i / 4;
    nodes.push(svgEl("line", {x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v), class: "grid"}));
    nodes.push(svgEl("text", {x: pad.left - 6, y: y(v) + 4, "text-anchor": "end"}, label));
  });
  for (let i = 0; i <= 3; i++) {
    const t = t0 + (t1 - t0) * i / 3;
    nodes.push(svgEl("text", {x: x(t), y: height - 6, "text-anchor": i === 0 ? "start" : i === 3 ? "end" : "middle"},
      fmtClock(t)));
  }
  nodes.push(svgEl("line", {x1: pad.left, x2: pad.left, y1: pad.top, y2: height - pad.bottom, class: "axis"}));
  nodes.push(svgEl("line", {x1: pad.left, x2: width - pad.right, y1: height - pad.bottom, y2: height - pad.bottom,
    class: "axis"}));
  for (const s of series) {
    let d = "";
    let pen = false;
    for (const [t, v] of s.points) {
      if (v === null) { pen = false; continue; }
      d += `${pen ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      pen = true;
    }
    if (d) nodes.push(svgEl("path", {d, class: `line s-${s.cls}`, "data-series": s.cls}));
    const last = s.points.filter((p) => p[1] !== null).at(-1);
    if (last) nodes.push(svgEl("circle", {cx: x(last[0]), cy: y(last[1]), r: 3, class: `s-${s.cls}`}));
  }
  svg.replaceChildren(...nodes);
}

/** Horizontal bars on a log scale (latencies span microseconds to seconds). rows: [{label, bars: [{cls, value}]}] */
function logBarChart(svg, rows, format) {
  const {width, height} = viewBox(svg);
  const values = rows.flatMap((r) => r.bars.map((b) => b.value)).filter((v) => v > 0);
  if (values.length === 0) { emptyChart(svg, "no requests timed yet"); return; }
  const pad = {left: 70, right: 64, top: 6, bottom: 20};
  const lo = Math.pow(10, Math.floor(Math.log10(Math.min(...values))));
  const hi = Math.pow(10, Math.ceil(Math.log10(Math.max(...values) * 1.01)));
  const x = (v) => pad.left + (width - pad.left - pad.right) * (Math.log10(v) - Math.log10(lo)) /
    (Math.log10(hi) - Math.log10(lo));
  const band = (height - pad.top - pad.bottom) / rows.length;
  const nodes = [];
  for (let decade = lo; decade <= hi * 1.0001; decade *= 10) {
    nodes.push(svgEl("line", {x1: x(decade), x2: x(decade), y1: pad.top, y2: height - pad.bottom, class: "grid"}));
    nodes.push(svgEl("text", {x: x(decade), y: height - 6, "text-anchor": "middle"}, format(decade)));
  }
  rows.forEach((row, i) => {
    const top = pad.top + band * i;
    nodes.push(svgEl("text", {x: pad.left - 6, y: top + band / 2 + 4, "text-anchor": "end"}, row.label));
    const barHeight = Math.min(14, (band - 6) / row.bars.length);
    row.bars.forEach((bar, j) => {
      if (!(bar.value > 0)) return;
      const barTop = top + 3 + j * barHeight;
      nodes.push(svgEl("rect", {x: pad.left, y: barTop, width: Math.max(1, x(bar.value) - pad.left),
        height: barHeight - 2, class: `s-${bar.cls}`, "data-series": `${row.label}-${bar.cls}`}));
      nodes.push(svgEl("text", {x: x(bar.value) + 4, y: barTop + barHeight - 4}, format(bar.value)));
    });
  });
  nodes.push(svgEl("line", {x1: pad.left, x2: pad.left, y1: pad.top, y2: height - pad.bottom, class: "axis"}));
  svg.replaceChildren(...nodes);
}

/** Horizontal bars on a linear scale. rows: [{label, value}] */
function barChart(svg, rows, cls) {
  const {width, height} = viewBox(svg);
  const pad = {left: 130, right: 50, top: 4, bottom: 4};
  const max = Math.max(...rows.map((r) => r.value), 1);
  const band = Math.min(24, (height - pad.top - pad.bottom) / rows.length);
  const nodes = [];
  rows.forEach((row, i) => {
    const top = pad.top + band * i;
    const barWidth = Math.max(1, (width - pad.left - pad.right) * row.value / max);
    nodes.push(svgEl("text", {x: pad.left - 6, y: top + band / 2 + 4, "text-anchor": "end"}, row.label));
    nodes.push(svgEl("rect", {x: pad.left, y: top + 3, width: barWidth, height: band - 6, class: `s-${cls}`,
      "data-series": row.label, "data-value": row.value}));
    nodes.push(svgEl("text", {x: pad.left + barWidth + 4, y: top + band / 2 + 4}, fmtCount(row.value)));
  });
  svg.replaceChildren(...nodes);
}

/** A rate with its interval: the band is the interval, the dot the point estimate. */
function intervalChart(svg, rate, low, high) {
  const {width, height} = viewBox(svg);
  const pad = {left: 12, right: 12};
  const top = Math.max(0.01, high * 1.25);
  const x = (v) => pad.left + (width - pad.left - pad.right) * v / top;
  const mid = 26;
  const nodes = [
    svgEl("line", {x1: x(0), x2: x(top), y1: mid, y2: mid, class: "axis"}),
    svgEl("rect", {x: x(low), y: mid - 9, width: Math.max(2, x(high) - x(low)), height: 18, class: "s-interval",
      "data-series": "interval"}),
    svgEl("circle", {cx: x(rate), cy: mid, r: 5, class: "s-miss", "data-series": "estimate"}),
  ];
  for (let i = 0; i <= 4; i++) {
    const v = top * i / 4;
    nodes.push(svgEl("text", {x: x(v), y: 62, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle"},
      fmtPercent(v)));
  }
  svg.replaceChildren(...nodes);
}

// ---- panels ------------------------------------------------------------------------------------------

function remember(summary) {
  const last = history.at(-1);
  const total = Object.values(summary.requests).reduce((a, b) => a + b, 0);
  // Counters only go down when the gateway restarted: the old history no longer subtracts.
  if (last && total < Object.values(last.requests).reduce((a, b) => a + b, 0)) history.length = 0;
  history.push({t: summary.time, requests: summary.requests, saved: summary.usd.saved, spent: summary.usd.spent});
  while (history.length > 2 && history[0].t < summary.time - HISTORY_S) history.shift();
}

/** For each snapshot after the first: each tier's share of the requests since WINDOW_S before it. */
function hitRateSeries() {
  const series = TIERS.map(([tier]) => ({cls: tier, points: []}));
  for (let i = 1; i < history.length; i++) {
    let j = 0;
    while (j < i - 1 && history[j + 1].t <= history[i].t - WINDOW_S) j++;
    const deltas = TIERS.map(([tier]) => (history[i].requests[tier] || 0) - (history[j].requests[tier] || 0));
    const total = deltas.reduce((a, b) => a + b, 0);
    deltas.forEach((delta, k) => series[k].points.push([history[i].t, total > 0 ? delta / total : null]));
  }
  return series;
}

function renderLegend(container, items) {
  container.replaceChildren(...items.map(([cls, label]) => {
    const item = el("span");
    item.append(el("span", {class: `swatch s-${cls}`}), document.createTextNode(label));
    return item;
  }));
}

function renderTotals(summary) {
  const requests = summary.requests;
  const total = Object.values(requests).reduce((a, b) => a + b, 0);
  const fromCache = FROM_CACHE.reduce((sum, tier) => sum + (requests[tier] || 0), 0);
  setMetric("requests.total", total, fmtCount(total));
  setMetric("served_from_cache", total ? fromCache / total : 0, total ? fmtPercent(fromCache / total) : "–");
  setMetric("usd.saved", summary.usd.saved, fmtUsd(summary.usd.saved));
  setMetric("usd.spent", summary.usd.spent, fmtUsd(summary.usd.spent));
  setMetric("store.entries", summary.store.entries, fmtCount(summary.store.entries));
  const errors = [...Object.values(summary.errors.tier), ...Object.values(summary.errors.upstream)]
    .reduce((a, b) => a + b, 0);
  setMetric("errors.total", errors, fmtCount(errors));
}

function renderHitRate(summary) {
  lineChart(document.getElementById("hit-rate-chart"), hitRateSeries(), {yMax: 1, yFormat: fmtPercent});
  const total = Object.values(summary.requests).reduce((a, b) => a + b, 0);
  fillRows(document.querySelector("#requests-table tbody"), TIERS.map(([tier, label]) => {
    const count = summary.requests[tier] || 0;
    return [label, metricCell("td", `requests.${tier}`, count, fmtCount(count)),
      total ? fmtPercent(count / total) : "–"];
  }));
}

function renderFalseHits(summary) {
  const text = document.getElementById("false-hits");
  const svg = document.getElementById("false-hit-chart");
  const fh = summary.false_hits;
  if (!fh) {
    text.textContent = "not measured yet";
    svg.hidden = true;
    return;
  }
  text.replaceChildren(
    metricCell("strong", "false_hits.rate", fh.rate, fmtPercent(fh.rate)),
    document.createTextNode(` (95% interval ${fmtPercent(fh.low)}–${fmtPercent(fh.high)}) from `),
    metricCell("span", "false_hits.checked", fh.checked, fmtCount(fh.checked)),
    document.createTextNode(" checked hits"));
  svg.hidden = false;
  intervalChart(svg, fh.rate, fh.low, fh.high);
}

function renderSavings(summary) {
  lineChart(document.getElementById("savings-chart"), [
    {cls: "saved", points: history.map((h) => [h.t, h.saved])},
    {cls: "spent", points: history.map((h) => [h.t, h.spent])},
  ], {yFormat: (v) => "$" + v.toPrecision(2)});
  fillRows(document.querySelector("#tokens-table tbody"), Object.entries(summary.tokens).map(([kind, t]) => [
    kind.replace("_", " "),
    metricCell("td", `tokens.${kind}.upstream`, t.upstream, fmtCount(t.upstream)),
    metricCell("td", `tokens.${kind}.saved`, t.saved, fmtCount(t.saved)),
  ]));
}

function renderLatency(summary) {
  const stages = Object.entries(summary.latency).filter(([, s]) => s.count > 0);
  logBarChart(document.getElementById("latency-chart"), stages.map(([stage, s]) => ({
    label: stage, bars: [{cls: "p50", value: s.p50_s}, {cls: "p95", value: s.p95_s}],
  })), fmtSeconds);
  fillRows(document.querySelector("#latency-table tbody"), stages.map(([stage, s]) => [
    stage,
    metricCell("td", `latency.${stage}.count`, s.count, fmtCount(s.count)),
    metricCell("td", `latency.${stage}.p50`, s.p50_s, fmtSeconds(s.p50_s)),
    metricCell("td", `latency.${stage}.p95`, s.p95_s, fmtSeconds(s.p95_s)),
  ]));
}

function renderLint(summary) {
  const findings = Object.entries(summary.prefix_lint.findings).filter(([, n]) => n > 0);
  const svg = document.getElementById("lint-chart");
  const line = document.getElementById("lint-summary");
  const total = findings.reduce((sum, [, n]) => sum + n, 0);
  line.replaceChildren(
    metricCell("strong", "prefix_lint.total", total, fmtCount(total)),
    document.createTextNode(" findings; "),
    metricCell("span", "prefix_lint.tokens_lost", summary.prefix_lint.tokens_lost,
      fmtCount(summary.prefix_lint.tokens_lost)),
    document.createTextNode(" prefix tokens made uncacheable"));
  if (findings.length === 0) { emptyChart(svg, "no volatile content found in prefixes"); return; }
  barChart(svg, findings.map(([kind, value]) => ({label: kind, value})), "lint");
}

function renderEntries(reply) {
  const now = Date.now() / 1000;
  fillRows(document.querySelector("#entries-table tbody"), reply.entries.map((entry) => [
    el("td", {class: "query", title: entry.query || ""}, entry.query || "(exact-only entry)"),
    metricCell("td", "entry.hits", entry.hits, fmtCount(entry.hits)),
    entry.model,
    fmtAge(entry.age_s),
    entry.ttl_remaining_s === null ? "no expiry" : fmtAge(entry.ttl_remaining_s),
    entry.tags.join(", "),
    el("td", {class: "id"}, entry.id.slice(0, 12)),
  ]));
  document.getElementById("entries-note").textContent = reply.complete
    ? `all ${fmtCount(reply.scanned)} entries, at ${fmtClock(now)}`
    : `among the newest ${fmtCount(reply.scanned)} entries, at ${fmtClock(now)}`;
}

// ---- polling -----------------------------------------------------------------------------------------

async function fetchJson(path) {
  const reply = await fetch(path, {credentials: "same-origin", cache: "no-store"});
  if (reply.status === 401) {
    // The session expired (or the token was rotated): the page itself now answers with the sign-in form.
    window.location.assign("/dashboard");
    throw new Error("signed out");
  }
  if (!reply.ok) throw new Error(`${path} answered HTTP ${reply.status}`);
  return reply.json();
}

function showStatus(text, isError) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
}

async function pollSummary() {
  try {
    const summary = await fetchJson("/dashboard/api/summary");
    remember(summary);
    renderTotals(summary);
    renderHitRate(summary);
    renderFalseHits(summary);
    renderSavings(summary);
    renderLatency(summary);
    renderLint(summary);
    document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
    showStatus(`updated ${fmtClock(summary.time)}`, false);
  } catch (error) {
    showStatus(`update failed: ${error.message}`, true);
  } finally {
    setTimeout(pollSummary, POLL_MS);
  }
}

async function pollEntries() {
  try {
    renderEntries(await fetchJson("/dashboard/api/top-entries"));
  } catch (error) {
    showStatus(`entries failed: ${error.message}`, true);
  } finally {
    setTimeout(pollEntries, ENTRIES_POLL_MS);
  }
}

renderLegend(document.getElementById("hit-rate-legend"), TIERS);
renderLegend(document.getElementById("savings-legend"), [["saved", "saved"], ["spent", "spent upstream"]]);
pollSummary();
pollEntries();
