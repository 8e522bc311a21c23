"use strict";
/*
 * The redrain admin page: one script, no build step, nothing fetched but the admin API
 * (docs/admin-api.md).
 *
 * Security: every piece of text from the API or an operator reaches the DOM through
 * `textContent`, `.value` or text nodes made by `h()`; nothing is ever parsed as HTML.
 */

// ---------------------------------------------------------------------------------------------
// DOM and formatting helpers
// ---------------------------------------------------------------------------------------------

const $ = (selector, root = document) => root.querySelector(selector);

/**
 * Makes an element. `attrs`: functions become event listeners (`onclick` → `click`), `class`
 * the class name, booleans and `value` properties, anything else an attribute; null and false
 * are skipped. Children: nodes, or anything else as a text node (never as HTML).
 */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value == null || value === false) continue;
    if (typeof value === "function") el.addEventListener(name.replace(/^on/, ""), value);
    else if (name === "class") el.className = value;
    else if (typeof value === "boolean" || name === "value") el[name] = value;
    else el.setAttribute(name, value);
  }
  return append(el, children);
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child == null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Sets a text only when it differs, so the polled pages do not churn the DOM. */
function setText(el, text) {
  const s = String(text);
  if (el.textContent !== s) el.textContent = s;
}

const grouped = new Intl.NumberFormat("en-US");
const fmtInt = (n) => (n == null ? "–" : grouped.format(n));
const fmtRate = (n) => (n == null || !isFinite(n) ? "–" : n >= 100 ? grouped.format(Math.round(n)) : n.toFixed(1));
const plural = (n, one, many = `${one}s`) => `${fmtInt(n)} ${n === 1 ? one : many}`;

function fmtBytes(n) {
  if (n == null) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  for (; n >= 1024 && i < units.length - 1; i++) n /= 1024;
  return i ? `${n.toFixed(1)} ${units[i]}` : `${n} B`;
}

/** An RFC 3339 string or ms since the epoch, shown in UTC like the config files. */
function fmtTime(t) {
  if (t == null || t === "") return "–";
  const d = new Date(t);
  return isNaN(d) ? String(t) : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

/** RFC 3339 in UTC, whole seconds: the form the config files use. */
const rfc3339 = (ms) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, "Z");

let flashTimer = 0;

/** The global banner: API errors (`kind` "error") and confirmations ("ok", "warn"). */
function flash(message, kind = "error") {
  const box = $("#flash");
  box.className = `flash ${kind}`;
  box.replaceChildren(
    h("span", { class: "flash-text" }, message),
    h("button", { type: "button", class: "flash-close", "aria-label": "Dismiss", onclick: () => { box.hidden = true; } }, "×"),
  );
  box.hidden = false;
  clearTimeout(flashTimer);
  flashTimer = setTimeout(() => { box.hidden = true; }, kind === "error" ? 10000 : 4000);
}

// ---------------------------------------------------------------------------------------------
// The API, the session and roles
// ---------------------------------------------------------------------------------------------

const API = "/admin/api";
const ROLES = ["viewer", "editor", "publisher"];

let session = null; // {name, role, csrf, expires_at} while logged in
let currentPage = null;
let shownSeq = -1;

class ApiError extends Error {
  constructor(status, body) {
    body = body && typeof body === "object" ? body : {};
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.code = body.code || "";
    this.body = body;
  }

  /** The field problems the error names: its `errors`, or its one `field`. */
  get problems() {
    if (Array.isArray(this.body.errors)) return this.body.errors;
    return this.body.field ? [{ field: this.body.field, problem: this.message }] : [];
  }
}

/**
 * Calls the admin API. Answers the parsed JSON; throws ApiError otherwise, after showing its
 * message in #flash (unless `quiet`). A 401 ends the session and shows the login form (unless
 * `login`, for the calls that are about logging in). `file` sends a raw body. A change refused
 * for its CSRF token (the session was renewed in another tab) is sent once more with the
 * session's current token.
 */
async function api(method, path, { body, file, signal, quiet = false, login = false, retried = false } = {}) {
  const headers = {};
  const init = { method, headers, signal, credentials: "same-origin" };
  if (method !== "GET" && session) headers["X-CSRF-Token"] = session.csrf;
  if (file) {
    init.body = file;
    headers["Content-Type"] = file.type || "application/octet-stream";
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    headers["Content-Type"] = "application/json";
  }
  let err;
  try {
    const res = await fetch(API + path, init);
    const data = await readJson(res);
    if (res.ok) return data;
    err = new ApiError(res.status, data);
  } catch (e) {
    if (e.name === "AbortError") throw e; // the caller no longer wants the answer
    err = new ApiError(0, { code: "network", message: `Cannot reach the engine: ${e.message}` });
  }
  if (err.status === 403 && err.code === "csrf" && !retried && !login) {
    try {
      session = await api("GET", "/session", { quiet: true, login: true });
    } catch {
      showLogin("Your session has ended; please log in again.");
      throw err;
    }
    return api(method, path, { body, file, signal, quiet, login, retried: true });
  }
  if (err.status === 401 && !login) showLogin("Your session has ended; please log in again.");
  else if (!quiet) flash(err.message);
  throw err;
}

async function readJson(res) {
  const text = await res.text();
  if (!text) return {};
  try {
    return JSON.parse(text);
  } catch {
    return { message: `${res.status} ${res.statusText}: ${text.slice(0, 200)}` };
  }
}

/** Whether the operator has `role` or a higher one. */
const can = (role) => session != null && ROLES.indexOf(session.role) >= ROLES.indexOf(role);

/** Disables a control the operator's role may not use (the server would answer 403). */
function gate(el, role) {
  if (!can(role)) {
    el.disabled = true;
    el.title = `Needs the ${role} role`;
  }
  return el;
}

function applyRoles() {
  for (const el of document.querySelectorAll("[data-role]")) {
    const ok = can(el.dataset.role);
    el.disabled = !ok;
    el.title = ok ? "" : `Needs the ${el.dataset.role} role`;
  }
}

/** Runs a UI action; API errors were already shown by api(), anything else is a bug, shown too. */
async function act(fn, button) {
  if (button) {
    if (button.classList.contains("busy")) return; // no double submits
    button.classList.add("busy");
  }
  try {
    await fn();
  } catch (e) {
    if (!(e instanceof ApiError)) {
      console.error(e);
      flash(`Unexpected error: ${e.message}`);
    }
  } finally {
    button?.classList.remove("busy");
  }
}

/** Shows a SeqNo in the top bar; never an older one, which an answer that was in flight during a publish may carry. */
function setSeq(seq) {
  if (typeof seq !== "number" || seq < shownSeq) return;
  shownSeq = seq;
  setText($("#seq"), seq);
}

async function boot() {
  try {
    startSession(await api("GET", "/session", { quiet: true, login: true }));
  } catch (e) {
    showLogin(e.status === 401 ? "" : e.message);
  }
}

async function onLogin(event) {
  event.preventDefault();
  const error = $("#login-error");
  const button = $("#login-submit");
  error.textContent = "";
  button.disabled = true;
  try {
    const body = { name: $("#login-name").value.trim(), password: $("#login-password").value };
    const s = await api("POST", "/login", { body, quiet: true, login: true });
    $("#login-password").value = "";
    startSession(s);
  } catch (e) {
    error.textContent = e.message;
  } finally {
    button.disabled = false;
  }
}

function startSession(s) {
  session = s;
  shownSeq = -1;
  // Unsaved edits survive a session that ran out, but are not handed to another operator.
  if (editor.operator !== s.name) Object.assign(editor, { operator: s.name, doc: null, dirty: false });
  $("#whoami").textContent = `${s.name} (${s.role})`;
  $("#whoami").title = `session expires ${fmtTime(s.expires_at)}`;
  $("#login").hidden = true;
  $("#app").hidden = false;
  applyRoles();
  route();
  refreshLive();
}

function showLogin(message = "") {
  leavePage();
  session = null;
  // Rows kept across polls carry controls gated by the role: the next operator gets fresh ones.
  for (const parent of ["#dash-campaigns tbody", "#dash-rounds", "#dash-partners tbody", "#lanes-table tbody"]) {
    resetRows($(parent));
  }
  $("#app").hidden = true;
  $("#login").hidden = false;
  $("#login-error").textContent = message;
  $("#login-name").focus();
}

async function logout() {
  try {
    await api("POST", "/logout", { quiet: true, login: true });
  } catch {
    // The session may be gone already; the login form is what is wanted either way.
  }
  showLogin();
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

const PAGES = {
  dashboard: { enter: enterDashboard },
  editor: { enter: enterEditor },
  review: { enter: enterReview },
  map: { enter: enterMap, leave: leaveMap },
  deliveries: { enter: enterDeliveries, leave: leaveDeliveries },
  reconciliation: { enter: () => loadReport(false) },
  audit: { enter: loadAudit },
};

function route() {
  if (!session) return;
  const asked = (location.hash.match(/^#\/([a-z]+)/) || [])[1];
  const page = PAGES[asked] ? asked : "dashboard";
  if (page !== asked) history.replaceState(null, "", "#/dashboard");
  if (page === currentPage) return;
  leavePage();
  currentPage = page;
  $("#flash").hidden = true; // a message about the page being left
  for (const name of Object.keys(PAGES)) $(`#page-${name}`).hidden = name !== page;
  for (const a of document.querySelectorAll(".sidenav a")) {
    const active = a.getAttribute("href") === `#/${page}`;
    a.classList.toggle("active", active);
    if (active) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  act(PAGES[page].enter);
}

function leavePage() {
  if (currentPage) PAGES[currentPage].leave?.();
  currentPage = null;
}

/**
 * Keeps one view per item in `parent`, in the items' order: a new key gets a view from
 * `make(item)` (`{el, update(item)}`), a gone one is removed, and every view is updated. Views
 * survive polls, with their state (a kill switch waiting for its confirming click, say).
 */
const viewsOf = new WeakMap();

function resetRows(parent) {
  parent.replaceChildren();
  viewsOf.delete(parent);
}

function syncRows(parent, items, keyOf, make) {
  let views = viewsOf.get(parent);
  if (!views) viewsOf.set(parent, (views = new Map()));
  const keys = items.map(keyOf);
  const wanted = new Set(keys);
  for (const [key, view] of views) {
    if (!wanted.has(key)) {
      view.el.remove();
      views.delete(key);
    }
  }
  items.forEach((item, i) => {
    let view = views.get(keys[i]);
    if (!view) views.set(keys[i], (view = make(item)));
    if (parent.children[i] !== view.el) parent.insertBefore(view.el, parent.children[i] || null);
    view.update(item); // after insertion: charts size themselves from the laid-out canvas
  });
}

// ---------------------------------------------------------------------------------------------
// Dashboard
// ---------------------------------------------------------------------------------------------

const OUTCOMES = ["win", "none", "capped", "not_live"];
const CONFIRM_MS = 4000;
const RATE_WINDOW_MS = 1000;
const CHART = { bar: "#c8322b", limit: "#1d2330", grid: "#e6e8ec" };

const dash = { timer: 0, inFlight: false, again: false, lastFetch: 0, samples: [], slotMs: 100 };

/** Columns of a delivery lane (`LaneStats`), shared by the dashboard and the deliveries page. */
const LANE_COLUMNS = [
  { label: "queued", value: (l) => fmtInt(l.queued) + (l.overflowed ? "+" : ""), help: "ids queued in memory; + means more wait in the store" },
  { label: "in flight", value: (l) => fmtInt(l.in_flight) },
  { label: "rate/s", value: (l) => fmtInt(l.rate_per_s), help: "configured rate" },
  { label: "now/s", value: (l) => fmtInt(l.current_rate_per_s), help: "the rate it sends at now (lower after trouble)", warn: (l) => l.current_rate_per_s < l.rate_per_s },
  { label: "delivered", value: (l) => fmtInt(l.delivered) },
  { label: "failures", value: (l) => fmtInt(l.failures), help: "timeouts, connection errors, 429 and 5xx answers" },
  { label: "deferred", value: (l) => fmtInt(l.deferred), help: "waiting for the user's partner account" },
  { label: "dead", value: (l) => fmtInt(l.dead), help: "given up; re-drive them", warn: (l) => l.dead > 0 },
  { label: "p50 / p99 ms", value: (l) => `${fmtInt(l.latency_p50_ms)} / ${fmtInt(l.latency_p99_ms)}`, help: "win → delivered latency" },
];

function laneHead(before, after) {
  return h("tr", {},
    before.map((t) => h("th", {}, t)),
    LANE_COLUMNS.map((c) => h("th", { class: "num", title: c.help }, c.label)),
    after.map((t) => h("th", { class: "action" }, t)));
}

function laneCells() {
  const cells = LANE_COLUMNS.map(() => h("td", { class: "num" }));
  return {
    cells,
    update(lane) {
      LANE_COLUMNS.forEach((c, i) => {
        setText(cells[i], lane ? c.value(lane) : "–");
        cells[i].classList.toggle("warn", Boolean(lane && c.warn?.(lane)));
      });
    },
  };
}

function initDashboard() {
  $("#dash-partners thead").replaceChildren(laneHead(["partner", "kind", "state"], [""]));
}

function enterDashboard() {
  dash.samples = []; // rates need two polls close together; older samples would smear them
  refreshLive();
}

/**
 * One poller serves the dashboard (every 400 ms) and keeps the top bar's SeqNo fresh on the
 * other pages (every 5 s). The next request is timed from the start of the last one and never
 * sent while one is in flight, so requests never pile up behind a slow answer.
 */
async function pollLive() {
  if (!session) return; // the chain stops with the session; startSession starts it again
  dash.inFlight = true;
  dash.lastFetch = Date.now();
  try {
    const live = await api("GET", "/live", { quiet: currentPage !== "dashboard" });
    setSeq(live.seq);
    if (currentPage === "dashboard") renderLive(live);
  } catch (e) {
    if (!(e instanceof ApiError)) console.error(e);
  } finally {
    dash.inFlight = false;
  }
  if (dash.again) {
    dash.again = false;
    refreshLive();
    return;
  }
  const period = currentPage === "dashboard" ? 400 : 5000;
  dash.timer = setTimeout(pollLive, Math.max(0, dash.lastFetch + period - Date.now()));
}

/** Polls now, or right after the request in flight (whose numbers may predate a change). */
function refreshLive() {
  if (dash.inFlight) {
    dash.again = true;
    return;
  }
  clearTimeout(dash.timer);
  pollLive();
}

function renderLive(live) {
  dash.slotMs = live.slot_ms || 100;
  setText($("#live-now"), fmtTime(live.now));
  $("#storage-failed").hidden = !live.storage_failed;
  renderDrawRates(live);
  setText($("#claims"), fmtInt(live.claims));
  setText($("#ship-lag"), live.ship_lag_bytes == null ? "not shipping" : fmtBytes(live.ship_lag_bytes));
  syncRows($("#dash-campaigns tbody"), live.campaigns || [], (c) => c.id, campaignRow);
  syncRows($("#dash-rounds"), live.rounds || [], (r) => `${r.kind}:${r.id}`, roundCard);
  syncRows($("#dash-partners tbody"), partnerLanes(live), (x) => `${x.partner ? "p" : "l"}:${x.id}`, partnerRow);
}

/**
 * Draws per second by outcome from the cumulative counters: the difference to the newest
 * sample at least a second old (so the figure is smoothed over about a second), over the
 * engine-time between them.
 */
function renderDrawRates(live) {
  const draws = live.draws || {};
  const t = Date.parse(live.now) || Date.now();
  const samples = dash.samples;
  const last = samples[samples.length - 1];
  const restarted = last && (t < last.t || Object.keys(draws).some((k) => draws[k] < (last.draws[k] || 0)));
  if (restarted) samples.length = 0;
  samples.push({ t, draws });
  while (samples.length > 2 && t - samples[1].t >= RATE_WINDOW_MS) samples.shift();
  const base = samples[0];
  const dt = (t - base.t) / 1000;
  const rateOf = (k) => (dt > 0 ? ((draws[k] || 0) - (base.draws[k] || 0)) / dt : null);
  const outcomes = [...new Set([...OUTCOMES, ...Object.keys(draws)])];
  const rows = outcomes.map((o) => ({ outcome: o, total: draws[o] || 0, rate: rateOf(o) }));
  syncRows($("#draws-per-s tbody"), rows, (r) => r.outcome, outcomeRow);
  const total = rows.reduce((sum, r) => sum + r.total, 0);
  setText($("#draws-total"), fmtInt(total));
  setText($("#draws-total-rate"), dt > 0 ? fmtRate(rows.reduce((sum, r) => sum + r.rate, 0)) : "–");
}

function outcomeRow(r) {
  const rate = h("td", { class: "num rate" });
  const total = h("td", { class: "num total" });
  const el = h("tr", { "data-outcome": r.outcome }, h("th", {}, r.outcome), rate, total);
  return {
    el,
    update(r) {
      setText(rate, fmtRate(r.rate));
      setText(total, fmtInt(r.total));
    },
  };
}

function pausedBadge() {
  const el = h("span", { class: "badge" });
  return {
    el,
    update(paused) {
      setText(el, paused ? "paused" : "active");
      el.classList.toggle("paused", Boolean(paused));
    },
  };
}

/**
 * A kill switch. The first click asks "Confirm pause?" in place (window.confirm would block
 * the page); a second click within a few seconds publishes the switch.
 */
function killButton(kind, id) {
  let paused = false;
  let armed = 0; // the timer that disarms the confirmation
  const el = gate(h("button", { type: "button", class: "kill" }), "publisher");
  const label = () => {
    setText(el, armed ? `Confirm ${paused ? "resume" : "pause"}?` : paused ? "Resume" : "Pause");
    el.classList.toggle("confirming", armed !== 0);
  };
  const disarm = () => {
    clearTimeout(armed);
    armed = 0;
    label();
  };
  el.addEventListener("click", () => {
    if (!armed) {
      armed = setTimeout(disarm, CONFIRM_MS);
      label();
      return;
    }
    disarm();
    const target = !paused;
    act(async () => {
      const res = await api("POST", "/kill", { body: { kind, id, paused: target } });
      setSeq(res.seq);
      flash(`${target ? "Paused" : "Resumed"} ${kind} ${id}${res.seq != null ? ` (SeqNo ${res.seq})` : ""}`, "ok");
      refreshLive();
    }, el);
  });
  return {
    el,
    update(p) {
      paused = Boolean(p);
      label();
    },
  };
}

function campaignRow(c) {
  const name = h("span", { class: "name" });
  const paused = pausedBadge();
  const kill = killButton("campaign", c.id);
  const el = h("tr", { "data-campaign": c.id },
    h("td", {}, name), h("td", {}, h("code", {}, c.id)), h("td", {}, paused.el), h("td", { class: "action" }, kill.el));
  return {
    el,
    update(c) {
      setText(name, c.name || c.id);
      paused.update(c.paused);
      kill.update(c.paused);
    },
  };
}

function roundCard(r) {
  const isDrops = r.kind === "drops";
  const name = h("span", { class: "name" });
  const about = h("span", { class: "muted" });
  const status = h("span", { class: "badge status" });
  const paused = pausedBadge();
  const kill = killButton(isDrops ? "drops" : "round", r.id);
  const prizes = h("tbody");
  const head = ["prize", "kind", "partner", "issued", "quota", "", "rate/s", "state", "wins per 100 ms, last minute", ""];
  const el = h("div", { class: "card round-card", "data-round": r.id },
    h("div", { class: "round-head" }, name, h("code", {}, r.id), about, status, paused.el, h("span", { class: "spacer" }), kill.el),
    h("table", { class: "grid prizes" },
      h("thead", {}, h("tr", {}, head.map((t, i) => h("th", { class: i === 3 || i === 4 || i === 6 ? "num" : null }, t)))),
      prizes));
  return {
    el,
    update(r) {
      setText(name, r.name || r.id);
      setText(about, `${isDrops ? "drop task" : "round"} of ${r.campaign}`);
      setText(status, r.status || "–");
      status.dataset.status = r.status || "";
      paused.update(r.paused);
      kill.update(r.paused);
      syncRows(prizes, r.prizes || [], (p) => p.id, prizeRow);
    },
  };
}

function prizeRow(p) {
  const issued = h("span", { class: "issued" });
  const quota = h("span", { class: "quota" });
  const bar = h("progress", { class: "quota-bar", max: "1", value: 0 });
  const kind = h("td");
  const partner = h("td");
  const rate = h("td", { class: "num" });
  const paused = pausedBadge();
  const kill = killButton("prize", p.id);
  const chart = h("canvas", { class: "slot-chart", title: "wins per 100 ms slot over the last minute; the line is this node's per-slot rate" });
  const el = h("tr", { "data-prize": p.id },
    h("td", {}, h("code", {}, p.id)), kind, partner,
    h("td", { class: "num" }, issued), h("td", { class: "num" }, quota), h("td", {}, bar),
    rate, h("td", {}, paused.el), h("td", { class: "chart-cell" }, chart), h("td", { class: "action" }, kill.el));
  return {
    el,
    update(p) {
      setText(kind, p.kind);
      setText(partner, p.partner);
      setText(issued, p.issued);
      setText(quota, p.quota);
      bar.max = Math.max(p.quota, 1);
      bar.value = Math.min(p.issued, bar.max);
      bar.title = `${((100 * p.issued) / Math.max(p.quota, 1)).toFixed(1)} % of the quota issued`;
      setText(rate, fmtInt(p.rate_per_s));
      rate.title = `this node: ${fmtInt(p.node_rate_per_s)}/s`;
      paused.update(p.paused);
      kill.update(p.paused);
      drawSlots(chart, p.slots || [], (p.node_rate_per_s * dash.slotMs) / 1000);
    },
  };
}

/** Configured partners with their lanes, then any lane whose partner left the config. */
function partnerLanes(live) {
  const lanes = new Map((live.lanes || []).map((l) => [l.partner, l]));
  const rows = (live.partners || []).map((p) => ({ id: p.id, partner: p, lane: lanes.get(p.id) }));
  for (const [id, lane] of lanes) {
    if (!rows.some((r) => r.id === id)) rows.push({ id, partner: null, lane });
  }
  return rows;
}

function partnerRow(x) {
  const name = h("span", { class: "name" });
  const kind = h("td");
  const paused = pausedBadge();
  const lane = laneCells();
  const kill = x.partner ? killButton("partner", x.id) : null;
  const el = h("tr", x.partner ? { "data-partner": x.id } : { "data-lane": x.id },
    h("td", {}, name, " ", h("code", {}, x.id)), kind, h("td", {}, paused.el), lane.cells,
    h("td", { class: "action" }, kill?.el));
  return {
    el,
    update(x) {
      setText(name, x.partner?.name || "");
      setText(kind, x.partner ? x.partner.kind
        : x.lane.settings_known === false ? "not in config, settings unknown: held" : "not in config");
      paused.update(x.partner ? x.partner.paused : x.lane.paused);
      lane.update(x.lane);
      kill?.update(x.partner.paused);
    },
  };
}

/**
 * Wins per slot over the last minute, one column per canvas pixel (the busiest slot it covers),
 * right-aligned on a 600-slot axis, with the per-slot rate as a dashed line.
 */
function drawSlots(canvas, slots, limit) {
  const ctx = fitCanvas(canvas);
  if (!ctx) return;
  const { width: w, height: ht } = canvas.getBoundingClientRect();
  const axis = Math.max(600, slots.length);
  const offset = axis - slots.length;
  const top = Math.max(1, limit, ...slots) * 1.15;
  const y = (v) => ht - (v / top) * (ht - 1);
  ctx.clearRect(0, 0, w, ht);
  ctx.fillStyle = CHART.grid;
  ctx.fillRect(0, ht - 1, w, 1);
  ctx.fillStyle = CHART.bar;
  const columns = Math.floor(w);
  for (let c = 0; c < columns; c++) {
    const from = Math.floor((c * axis) / columns) - offset;
    const to = Math.max(from + 1, Math.floor(((c + 1) * axis) / columns) - offset);
    let v = 0;
    for (let i = Math.max(from, 0); i < to && i < slots.length; i++) v = Math.max(v, slots[i]);
    if (v > 0) ctx.fillRect(c, y(v), 1, ht - y(v));
  }
  if (limit > 0) {
    ctx.strokeStyle = CHART.limit;
    ctx.setLineDash([3, 3]);
    ctx.beginPath();
    ctx.moveTo(0, Math.round(y(limit)) + 0.5);
    ctx.lineTo(w, Math.round(y(limit)) + 0.5);
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = CHART.limit;
    ctx.font = "10px system-ui, sans-serif";
    ctx.fillText(`${fmtRate(limit)}/slot`, 2, Math.max(10, y(limit) - 2));
  }
}

/** Sizes a canvas's pixels to its laid-out size (sharp on high-DPI screens); null while hidden. */
function fitCanvas(canvas) {
  const { width, height } = canvas.getBoundingClientRect();
  if (!width || !height) return null;
  const dpr = window.devicePixelRatio || 1;
  const pw = Math.round(width * dpr);
  const ph = Math.round(height * dpr);
  if (canvas.width !== pw || canvas.height !== ph) {
    canvas.width = pw;
    canvas.height = ph;
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return ctx;
}

// ---------------------------------------------------------------------------------------------
// Editor: the draft config as a structured form
// ---------------------------------------------------------------------------------------------

// Field kinds, following the raw structs in quota/src/config.rs.
const text = (key, placeholder = "") => ({ key, type: "text", placeholder });
const time = (key) => text(key, "2026-01-01T00:00:00Z");
const required = (key) => ({ key, type: "number" }); // empty: null, so the server names it
const optional = (key, placeholder) => ({ key, type: "number", placeholder }); // Option: empty is null
const defaulted = (key, dflt) => ({ key, type: "number", dflt }); // serde default: empty is left out
const flag = (key) => ({ key, type: "bool" });
const choice = (key, options) => ({ key, type: "select", options });
const ref = (key, list) => ({ key, type: "ref", list }); // a select of the ids in `list`

const CAMPAIGN_FIELDS = [
  text("id"), text("name"), time("starts_at"), time("ends_at"),
  optional("max_wins_per_user", "no limit"), optional("max_cash_cents_per_user", "no limit"), flag("paused"),
];
const PARTNER_FIELDS = [
  text("id"), text("name"), choice("kind", ["wallet", "coupon"]), text("url", "http://host:port/path"),
  required("rate_per_s"), required("max_in_flight"), required("timeout_ms"),
  optional("retry_deadline_s", "default 86400"), optional("deferred_retry_s", "default 600"), flag("paused"),
];
const ROUND_FIELDS = [
  text("id"), ref("campaign", "campaigns"), text("name"), time("starts_at"), required("duration_s"),
  optional("every_s", "one-off"), required("participation_s"), defaulted("stagger_groups", 1),
  defaulted("stagger_s", 0), required("max_wins_per_user"), required("no_win_weight"), flag("paused"),
];
const DROP_FIELDS = [
  text("id"), ref("campaign", "campaigns"), text("name"),
  { ...text("points", "drops/points.csv"), upload: "points" },
  { key: "zones", type: "list", placeholder: "zone files, comma-separated", upload: "zones" },
  defaulted("resolution", 10), defaulted("k", 2), required("radius_m"), time("starts_at"), time("ends_at"),
  defaulted("per_drop", 1), required("max_claims_per_user"), defaulted("region_refresh_s", 5), flag("paused"),
];
const PRIZE_FIELDS = [
  text("id"), choice("kind", ["cash", "coupon"]), optional("amount_cents", "cash: fixed"),
  optional("amount_min_cents", "cash: range"), optional("amount_max_cents", "cash: range"),
  { ...text("sku", "coupon only"), nullable: true }, ref("partner", "partners"),
  required("quota"), required("rate_per_s"), required("weight"), flag("paused"),
];

const LISTS = [
  { key: "campaigns", title: "Campaigns", noun: "campaign", addId: "add-campaign", fields: CAMPAIGN_FIELDS, fresh: newCampaign },
  { key: "partners", title: "Partners", noun: "partner", addId: "add-partner", fields: PARTNER_FIELDS, fresh: newPartner },
  { key: "rounds", title: "Rounds", noun: "round", addId: "add-round", fields: ROUND_FIELDS, fresh: newRound, prizes: true },
  { key: "drops", title: "Drop tasks", noun: "drop task", addId: "add-drops", fields: DROP_FIELDS, fresh: newDropTask, prizes: true },
];

const MAX_UPLOAD_BYTES = 64 * 1024 * 1024;

/**
 * The name an upload is stored under (the server takes letters, digits, '-' and '_', at most
 * 100, then .csv, .geojson or .json): the file's own name with anything else made '-'; null
 * for another kind of file.
 */
function uploadName(fileName) {
  const dot = fileName.lastIndexOf(".");
  const ext = dot < 0 ? "" : fileName.slice(dot + 1).toLowerCase();
  if (!["csv", "geojson", "json"].includes(ext)) return null;
  const stem = fileName.slice(0, dot).replace(/[^A-Za-z0-9_-]+/g, "-").slice(0, 100) || "upload";
  return `${stem}.${ext}`;
}

const DAY_MS = 86_400_000;

const editor = {
  operator: null, // whose local edits `doc` holds
  doc: null, // the config being edited; inputs write into it directly
  meta: null, // the last draft answer: saved_by, saved_at, live_seq
  dirty: false,
  inputs: new Map(), // data-path → {input, err}
  sections: new Map(), // data-section → its error element
  refSelects: [], // {select, list}: refilled when an id changes
};

function firstId(list, prefer = () => true) {
  const items = editor.doc[list];
  return (items.find(prefer) || items[0] || {}).id || "";
}

function newCampaign() {
  const now = Date.now();
  return {
    id: "", name: "", starts_at: rfc3339(now), ends_at: rfc3339(now + 30 * DAY_MS),
    max_wins_per_user: null, max_cash_cents_per_user: null, paused: false,
  };
}

function newPartner() {
  return { id: "", name: "", kind: "wallet", url: "http://", rate_per_s: 100, max_in_flight: 16, timeout_ms: 2000, paused: false };
}

function newRound() {
  return {
    id: "", campaign: firstId("campaigns"), name: "", starts_at: rfc3339(Date.now()), duration_s: 60,
    every_s: null, participation_s: 60, stagger_groups: 1, stagger_s: 0, max_wins_per_user: 1,
    no_win_weight: 100, paused: false, prizes: [],
  };
}

function newDropTask() {
  const now = Date.now();
  return {
    id: "", campaign: firstId("campaigns"), name: "", points: "", zones: [], resolution: 10, k: 2,
    radius_m: 60, starts_at: rfc3339(now), ends_at: rfc3339(now + DAY_MS), per_drop: 1,
    max_claims_per_user: 1, region_refresh_s: 5, paused: false, prizes: [],
  };
}

function newPrize() {
  return {
    id: "", kind: "cash", amount_cents: 100, amount_min_cents: null, amount_max_cents: null, sku: null,
    partner: firstId("partners", (p) => p.kind === "wallet"), quota: 100, rate_per_s: 10, weight: 10, paused: false,
  };
}

/** Makes sure every list the form walks exists (a draft saved as written may lack some). */
function normalizeDoc(config) {
  const doc = config && typeof config === "object" ? config : {};
  for (const list of LISTS) if (!Array.isArray(doc[list.key])) doc[list.key] = [];
  for (const owner of [...doc.rounds, ...doc.drops]) if (!Array.isArray(owner.prizes)) owner.prizes = [];
  return doc;
}

function initEditor() {
  $("#save-draft").addEventListener("click", (e) => act(saveDraft, e.currentTarget));
  $("#discard-draft").addEventListener("click", (e) => act(discardDraft, e.currentTarget));
  $("#reload-draft").addEventListener("click", (e) => act(loadDraft, e.currentTarget));
}

/** Local edits survive a visit to another page; otherwise the saved draft is fetched afresh. */
async function enterEditor() {
  if (editor.doc && editor.dirty) renderEditor();
  else await loadDraft();
}

async function loadDraft() {
  acceptDraft(await api("GET", "/draft"));
}

function acceptDraft(draft) {
  editor.doc = normalizeDoc(draft.config);
  editor.meta = draft;
  editor.dirty = false;
  setSeq(draft.live_seq);
  renderEditor();
  showEditorErrors(draft.errors || []);
}

async function saveDraft() {
  if (!editor.doc) return;
  try {
    const expect_rev = editor.meta ? editor.meta.rev ?? null : null;
    const draft = await api("PUT", "/draft", { body: { config: editor.doc, expect_rev } });
    acceptDraft(draft);
    const n = (draft.errors || []).length;
    flash(n ? `Draft saved with ${plural(n, "problem")}` : "Draft saved", n ? "warn" : "ok");
  } catch (e) {
    // A document the server cannot read at all is refused with the field it stumbled on.
    if (e instanceof ApiError && e.problems.length) showEditorErrors(e.problems);
    throw e;
  }
}

async function discardDraft() {
  const rev = editor.meta && editor.meta.rev;
  if (rev) {
    await api("DELETE", "/draft", { body: { expect_rev: rev } });
    flash("Draft discarded: the editor shows the live config", "ok");
  }
  await loadDraft();
}

function markDirty() {
  editor.dirty = true;
  updateDraftStatus();
}

function updateDraftStatus() {
  const m = editor.meta || {};
  const saved = m.saved_by
    ? `Draft saved by ${m.saved_by} at ${fmtTime(m.saved_at)}`
    : `No draft saved: editing the live config (SeqNo ${m.live_seq ?? "?"})`;
  $("#draft-status").replaceChildren(
    saved,
    editor.dirty ? h("span", { class: "dirty" }, " · unsaved local changes") : "",
    staleBase(m) ? h("div", { class: "warn-text" }, staleBase(m)) : "",
  );
}

/** Rebuilds the whole form from editor.doc (after a load, an add or a remove: paths shift). */
function renderEditor() {
  const form = $("#editor-form");
  const scrollY = window.scrollY;
  editor.inputs = new Map();
  editor.sections = new Map();
  editor.refSelects = [];
  const rootError = h("div", { class: "field-error section-error" });
  editor.sections.set("", rootError);
  form.dataset.section = "";
  form.disabled = !can("editor");
  form.replaceChildren(rootError, ...LISTS.map(renderList));
  window.scrollTo(0, scrollY);
  updateDraftStatus();
}

/** A part of the form named by its path, with an element for the problems that have no input of their own. */
function sectionBox(path, cls, head, ...children) {
  const err = h("div", { class: "field-error section-error" });
  editor.sections.set(path, err);
  return h("div", { class: cls, "data-section": path }, head, err, ...children);
}

function renderList(list) {
  const items = editor.doc[list.key];
  const head = h("div", { class: "list-head" },
    h("h2", {}, list.title, h("span", { class: "count" }, items.length)),
    h("button", { type: "button", id: list.addId, onclick: () => addEntry(list.key, items, list.fresh()) }, `Add ${list.noun}`));
  const entries = items.map((item, i) => {
    const path = `${list.key}[${i}]`;
    return sectionBox(path, "entry", entryHead(`${list.noun} ${i + 1}`, items, i),
      fieldGrid(path, item, list.fields),
      list.prizes && renderPrizes(path, item.prizes));
  });
  return sectionBox(list.key, "list", head, entries.length ? entries : h("p", { class: "muted" }, `No ${list.noun}s.`));
}

function renderPrizes(base, items) {
  const head = h("div", { class: "list-head" },
    h("h3", {}, "Prizes", h("span", { class: "count" }, items.length)),
    h("button", { type: "button", class: "add-prize", onclick: () => addEntry(`${base}.prizes`, items, newPrize()) }, "Add prize"));
  return sectionBox(`${base}.prizes`, "list nested", head, items.map((prize, j) => {
    const path = `${base}.prizes[${j}]`;
    return sectionBox(path, "entry prize", entryHead(`prize ${j + 1}`, items, j), fieldGrid(path, prize, PRIZE_FIELDS));
  }));
}

function entryHead(title, items, index) {
  return h("div", { class: "entry-head" },
    h("h3", {}, title),
    h("button", { type: "button", class: "remove", onclick: () => removeEntry(items, index) }, "Remove"));
}

function addEntry(listPath, items, item) {
  items.push(item);
  markDirty();
  renderEditor();
  const first = editor.inputs.get(`${listPath}[${items.length - 1}].id`);
  first?.input.focus();
  first?.input.scrollIntoView({ block: "center" });
}

function removeEntry(items, index) {
  items.splice(index, 1);
  markDirty();
  renderEditor();
}

function fieldGrid(base, obj, fields) {
  return h("div", { class: "fields" }, fields.map((f) => field(base, obj, f)));
}

/** One input bound to `obj[f.key]`, with its label and its error element right after it. */
function field(base, obj, f) {
  const path = `${base}.${f.key}`;
  const input = makeInput(obj, f);
  input.id = `f-${path}`;
  input.dataset.path = path;
  const err = h("div", { class: "field-error" });
  editor.inputs.set(path, { input, err });
  const live = input.tagName === "SELECT" || input.type === "checkbox" ? "change" : "input";
  input.addEventListener(live, () => {
    readInput(input, obj, f);
    markDirty();
  });
  if (f.key === "id") input.addEventListener("change", refreshRefSelects);
  return h("div", { class: `field field-${f.type}` },
    h("label", { for: input.id }, f.key),
    input, err,
    f.upload && uploadControl(f.upload, obj, input));
}

function makeInput(obj, f) {
  const v = obj[f.key];
  switch (f.type) {
    case "bool":
      return h("input", { type: "checkbox", checked: Boolean(v) });
    case "number":
      return h("input", { type: "number", min: "0", step: "1", value: v ?? "", placeholder: f.dflt != null ? `default ${f.dflt}` : f.placeholder });
    case "list":
      return h("input", { type: "text", value: Array.isArray(v) ? v.join(", ") : "", placeholder: f.placeholder, spellcheck: "false" });
    case "select":
      return fillSelect(h("select"), f.options, v);
    case "ref": {
      const select = fillSelect(h("select"), idsOf(f.list), v);
      editor.refSelects.push({ select, list: f.list });
      return select;
    }
    default:
      return h("input", { type: "text", value: v ?? "", placeholder: f.placeholder, spellcheck: "false" });
  }
}

/** Writes an input's value into the document as the server reads it. */
function readInput(input, obj, f) {
  switch (f.type) {
    case "bool":
      obj[f.key] = input.checked;
      break;
    case "number":
      if (input.value !== "") obj[f.key] = Number(input.value);
      else if (f.dflt != null) delete obj[f.key];
      else obj[f.key] = null;
      break;
    case "list":
      obj[f.key] = input.value.split(",").map((s) => s.trim()).filter(Boolean);
      break;
    default:
      obj[f.key] = f.nullable && input.value === "" ? null : input.value;
  }
}

const idsOf = (list) => editor.doc[list].map((x) => x.id).filter(Boolean);

/** Fills a select; a value not among the options is kept as one, so loading never changes the document. */
function fillSelect(select, values, current) {
  const all = current == null || values.includes(current) ? values : [...values, current];
  select.replaceChildren(...all.map((v) => h("option", { value: v }, v === "" ? "(none)" : v)));
  select.value = current ?? "";
  return select;
}

function refreshRefSelects() {
  for (const { select, list } of editor.refSelects) fillSelect(select, idsOf(list), select.value);
}

/** Upload buttons: a drop task's POI file (replaces `points`) or a zone file (added to `zones`). */
function uploadControl(kind, obj, input) {
  const note = h("span", { class: "upload-note" });
  const picker = h("input", {
    type: "file",
    class: `upload-input upload-${kind}`,
    accept: kind === "points" ? ".csv,.geojson,.json" : ".geojson,.json",
  });
  const button = h("label", { class: "button small" }, kind === "points" ? "Upload POI file…" : "Add zone file…", picker);
  picker.addEventListener("change", () => act(async () => {
    const file = picker.files[0];
    picker.value = "";
    if (!file) return;
    if (file.size > MAX_UPLOAD_BYTES) {
      flash(`${file.name} is ${fmtBytes(file.size)}; uploads are at most 64 MiB`);
      return;
    }
    const name = uploadName(file.name);
    if (!name) {
      flash(`${file.name}: only .csv, .geojson and .json files can be uploaded`);
      return;
    }
    note.textContent = `uploading ${file.name}…`;
    try {
      const res = await api("POST", `/uploads?name=${encodeURIComponent(name)}`, { file });
      if (kind === "points") obj.points = res.path;
      else obj.zones = [...(Array.isArray(obj.zones) ? obj.zones : []), res.path];
      input.value = kind === "points" ? obj.points : obj.zones.join(", ");
      note.textContent = `${file.name}: ${fmtBytes(res.bytes)}${res.points != null ? `, ${plural(res.points, "point")}` : ""}`;
      markDirty();
    } catch (e) {
      note.textContent = "";
      throw e;
    }
  }, button));
  return h("div", { class: "upload" }, button, note);
}

/** Shows each problem at its input, or at the nearest enclosing section; clears the old ones. */
function showEditorErrors(errors) {
  for (const { input, err } of editor.inputs.values()) {
    input.classList.remove("invalid");
    err.replaceChildren();
  }
  for (const err of editor.sections.values()) err.replaceChildren();
  const box = $("#editor-errors");
  box.hidden = errors.length === 0;
  box.replaceChildren(
    h("strong", {}, `${plural(errors.length, "problem")}: the draft can be saved, but not published until they are fixed.`),
    h("ul", {}, errors.map((e) => h("li", {},
      h("button", { type: "button", class: "link", onclick: () => focusField(e.field) }, e.field), ": ", e.problem))));
  for (const e of errors) {
    const at = errorTarget(e.field);
    at.input?.classList.add("invalid");
    at.err.append(h("div", {}, at.exact ? e.problem : `${e.field}: ${e.problem}`));
  }
}

/** `rounds[1].prizes[0].quota` → `rounds[1].prizes[0]` → `rounds[1].prizes` → `rounds[1]` → `rounds` → "". */
function parentPath(path) {
  const m = path.match(/^(.*)(\[\d+\]|\.[^.[\]]+)$/);
  return m ? m[1] : "";
}

function errorTarget(field) {
  for (let path = field || ""; ; path = parentPath(path)) {
    const input = editor.inputs.get(path);
    if (input) return { ...input, exact: path === field };
    const err = editor.sections.get(path);
    if (err || !path) return { err: err || editor.sections.get(""), exact: false };
  }
}

function focusField(field) {
  const at = errorTarget(field);
  const target = at.input || at.err;
  target.scrollIntoView({ block: "center" });
  at.input?.focus();
}

// ---------------------------------------------------------------------------------------------
// Review and publish
// ---------------------------------------------------------------------------------------------

let reviewed = null; // the draft answer the review shows (its live_seq is what a publish expects)

function initReview() {
  $("#publish").addEventListener("click", (e) => act(publish, e.currentTarget));
}

function enterReview() {
  $("#publish-result").replaceChildren();
  return loadReview();
}

/** A warning when the draft was started from an older SeqNo than the live one, else "". */
function staleBase(d) {
  if (!d.rev || d.base_seq == null || d.base_seq >= d.live_seq) return "";
  return `This draft was started from SeqNo ${d.base_seq}; SeqNo ${d.live_seq} is live now. ` +
    "Publishing it also undoes what was published since (a kill switch, another publish): " +
    "the review lists those changes too.";
}

async function loadReview() {
  const d = await api("GET", "/draft");
  reviewed = d;
  setSeq(d.live_seq);
  $("#review-summary").replaceChildren(
    d.saved_by
      ? `Draft saved by ${d.saved_by} at ${fmtTime(d.saved_at)}, compared with the live config, SeqNo ${d.live_seq}.`
      : `No draft is saved: the draft is the live config, SeqNo ${d.live_seq}.`,
    staleBase(d) ? h("div", { class: "warn-text" }, staleBase(d)) : "",
  );
  $("#review-local").hidden = !editor.dirty;
  const changes = d.changes || [];
  const errors = d.errors || [];
  $("#changes").replaceChildren(...changes.map((c) => h("li", {}, c)));
  renderReviewErrors(errors);
  const blocked = !can("publisher") ? "Publishing needs the publisher role."
    : errors.length ? "Fix the problems in the editor before publishing."
    : !d.rev ? "Nothing to publish: save a draft in the editor first."
    : changes.length === 0 ? "Nothing to publish: the draft equals the live config."
    : "";
  $("#publish").disabled = blocked !== "";
  $("#publish-hint").textContent = blocked;
}

function renderReviewErrors(errors) {
  $("#review-errors").replaceChildren(errors.length
    ? h("ul", { class: "error-list" }, errors.map((e) => h("li", {}, h("code", {}, e.field), " ", e.problem)))
    : h("p", { class: "ok-text" }, "No problems."));
}

async function publish() {
  const result = $("#publish-result");
  result.className = "result";
  result.replaceChildren();
  try {
    const body = { expect_seq: reviewed.live_seq, expect_rev: reviewed.rev };
    const res = await api("POST", "/draft/publish", { body });
    setSeq(res.seq);
    result.classList.add("ok");
    result.textContent = `Published SeqNo ${res.seq}`;
    if (!editor.dirty) editor.doc = null; // the editor reloads what is now live
    await loadReview();
  } catch (e) {
    if (!(e instanceof ApiError)) throw e;
    result.classList.add("error");
    result.textContent = e.message;
    await loadReview();
    if (e.code === "stale_review") {
      result.append(h("div", {}, `The live config changed while you reviewed: the changes above are now against SeqNo ${reviewed.live_seq}. Check them and publish again.`));
    }
    if (e.code === "draft_changed") {
      result.append(h("div", {}, "The draft was saved again or discarded while you reviewed: the review above shows it as it is now. Check it and publish again."));
    }
    if (e.problems.length) renderReviewErrors(e.problems);
  }
}

// ---------------------------------------------------------------------------------------------
// Map of a drop task's points
// ---------------------------------------------------------------------------------------------

const MAP_MAX_POINTS = 4000;
const MAP_COLORS = { bg: "#f7f8fa", grid: "#e3e6eb", label: "#8a909c", bbox: "#6b7280", full: "#1f8a4c", partial: "#d08a12", empty: "#a3a8b1" };
const WORLD = [-60, -180, 75, 180];

const map = {
  tasks: [],
  task: null,
  view: null, // {lat, lng, k}: the centre and pixels per degree of longitude
  cos0: 1, // cos of the projection's standard parallel, fixed per task so panning never warps
  data: null, // the last answer, with the box it was asked for
  width: 0,
  height: 0,
  asked: 0, // number of the latest request: older answers are dropped
  request: null, // the AbortController of the request in flight
  timer: 0,
  drag: null,
};

function initMap() {
  const canvas = $("#map-canvas");
  canvas.addEventListener("wheel", (e) => {
    e.preventDefault();
    const delta = e.deltaY * (e.deltaMode === 1 ? 16 : 1);
    zoomAt(e.offsetX, e.offsetY, Math.exp(-delta * 0.002));
  }, { passive: false });
  canvas.addEventListener("pointerdown", (e) => {
    canvas.setPointerCapture(e.pointerId);
    map.drag = { x: e.clientX, y: e.clientY };
    canvas.classList.add("dragging");
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!map.drag || !map.view) return;
    pan(e.clientX - map.drag.x, e.clientY - map.drag.y);
    map.drag = { x: e.clientX, y: e.clientY };
  });
  const endDrag = () => {
    map.drag = null;
    canvas.classList.remove("dragging");
  };
  canvas.addEventListener("pointerup", endDrag);
  canvas.addEventListener("pointercancel", endDrag);
  $("#map-zoom-in").addEventListener("click", () => zoomAt(map.width / 2, map.height / 2, 1.5));
  $("#map-zoom-out").addEventListener("click", () => zoomAt(map.width / 2, map.height / 2, 1 / 1.5));
  $("#map-reset").addEventListener("click", resetView);
  $("#map-task").addEventListener("change", (e) => selectTask(e.target.value));
  window.addEventListener("resize", () => {
    if (currentPage === "map") viewChanged();
  });
}

async function enterMap() {
  const { tasks } = await api("GET", "/drops");
  map.tasks = tasks || [];
  const select = $("#map-task");
  select.replaceChildren(...map.tasks.map((t) => h("option", { value: t.id }, `${t.name || t.id} (${t.id}, ${plural(t.points, "point")})`)));
  select.disabled = map.tasks.length === 0;
  const keep = map.task && map.tasks.find((t) => t.id === map.task.id);
  if (keep && map.view) {
    select.value = keep.id;
    map.task = keep;
    viewChanged(); // same task as last time: keep the view
  } else {
    selectTask(map.tasks[0]?.id);
  }
}

function leaveMap() {
  clearTimeout(map.timer);
  map.asked++; // drop any answer still on its way
}

function selectTask(id) {
  map.task = map.tasks.find((t) => t.id === id) || null;
  map.data = null;
  $("#map-status").textContent = map.task ? "" : "No drop task is live.";
  renderLegend();
  resetView();
}

/** Fits the view to the task's points (the world when it has none). */
function resetView() {
  sizeMap();
  if (!map.width) return; // the page is hidden
  const [s, w, n, e] = map.task?.bbox || WORLD;
  const lat0 = (s + n) / 2;
  map.cos0 = Math.max(Math.cos((lat0 * Math.PI) / 180), 0.05);
  const spanLng = Math.max(e - w, 0.002);
  const spanLat = Math.max(n - s, 0.002);
  const k = 0.9 * Math.min(map.width / spanLng, (map.height * map.cos0) / spanLat);
  map.view = { lat: lat0, lng: (w + e) / 2, k: clampZoom(k) };
  viewChanged();
}

function sizeMap() {
  const rect = $("#map-canvas").getBoundingClientRect();
  map.width = rect.width;
  map.height = rect.height;
}

const clampZoom = (k) => Math.min(Math.max(k, map.width / 360), 1e7);

/** Equirectangular: x follows longitude, y latitude stretched by 1/cos of the standard parallel. */
function project(lat, lng) {
  const v = map.view;
  return [map.width / 2 + (lng - v.lng) * v.k, map.height / 2 - ((lat - v.lat) * v.k) / map.cos0];
}

function unproject(x, y) {
  const v = map.view;
  return [v.lat - ((y - map.height / 2) * map.cos0) / v.k, v.lng + (x - map.width / 2) / v.k];
}

function visibleBox() {
  const [north, west] = unproject(0, 0);
  const [south, east] = unproject(map.width, map.height);
  return {
    south: Math.max(south, -90), west: Math.max(west, -180),
    north: Math.min(north, 90), east: Math.min(east, 180),
  };
}

function zoomAt(x, y, factor) {
  if (!map.view) return;
  const [lat, lng] = unproject(x, y);
  const v = map.view;
  v.k = clampZoom(v.k * factor);
  // Keep the point under the cursor where it is.
  v.lng = lng - (x - map.width / 2) / v.k;
  v.lat = lat + ((y - map.height / 2) * map.cos0) / v.k;
  viewChanged();
}

function pan(dx, dy) {
  const v = map.view;
  v.lng -= dx / v.k;
  v.lat = Math.min(Math.max(v.lat + (dy * map.cos0) / v.k, -85), 85);
  viewChanged();
}

/** Redraws at once with what is known, and asks for the new box once the view settles. */
function viewChanged() {
  sizeMap();
  drawMap();
  clearTimeout(map.timer);
  map.timer = setTimeout(() => act(fetchMap), 200);
}

async function fetchMap() {
  if (!map.task || !map.view) return;
  const box = visibleBox();
  const asked = ++map.asked;
  if (!(box.south < box.north && box.west < box.east)) {
    map.data = null; // the view is off the globe
  } else {
    const q = new URLSearchParams({
      south: box.south.toFixed(6), west: box.west.toFixed(6), north: box.north.toFixed(6),
      east: box.east.toFixed(6), max: String(MAP_MAX_POINTS),
    });
    // A newer view replaces this one's request: the old one is cancelled, not just ignored.
    if (map.request) map.request.abort();
    const request = new AbortController();
    map.request = request;
    let data;
    try {
      data = await api("GET", `/drops/${encodeURIComponent(map.task.id)}/map?${q}`, { signal: request.signal });
    } catch (e) {
      if (e.name === "AbortError") return;
      throw e;
    } finally {
      if (map.request === request) map.request = null;
    }
    if (asked !== map.asked) return;
    map.data = { ...data, box };
  }
  drawMap();
  renderLegend();
}

function drawMap() {
  const ctx = fitCanvas($("#map-canvas"));
  if (!ctx) return;
  ctx.fillStyle = MAP_COLORS.bg;
  ctx.fillRect(0, 0, map.width, map.height);
  if (!map.view) return;
  drawGraticule(ctx);
  if (map.task?.bbox) drawBbox(ctx, map.task.bbox);
  if (map.data?.mode === "density") drawDensity(ctx, map.data);
  else if (map.data?.mode === "points") drawPoints(ctx, map.data);
}

/** 1, 2 or 5 times a power of ten, at least `x`. */
function niceStep(x) {
  const p = 10 ** Math.floor(Math.log10(x));
  return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= x);
}

function drawGraticule(ctx) {
  const step = niceStep(110 / map.view.k);
  const digits = Math.max(0, -Math.floor(Math.log10(step)));
  const { south, west, north, east } = visibleBox();
  ctx.strokeStyle = MAP_COLORS.grid;
  ctx.fillStyle = MAP_COLORS.label;
  ctx.font = "10px system-ui, sans-serif";
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let lng = Math.ceil(west / step) * step; lng <= east; lng += step) {
    const [x] = project(0, lng);
    ctx.moveTo(Math.round(x) + 0.5, 0);
    ctx.lineTo(Math.round(x) + 0.5, map.height);
    ctx.fillText(lng.toFixed(digits), x + 3, 11);
  }
  for (let lat = Math.ceil(south / step) * step; lat <= north; lat += step) {
    const [, y] = project(lat, 0);
    ctx.moveTo(0, Math.round(y) + 0.5);
    ctx.lineTo(map.width, Math.round(y) + 0.5);
    ctx.fillText(lat.toFixed(digits), 3, y - 3);
  }
  ctx.stroke();
}

function drawBbox(ctx, [s, w, n, e]) {
  const [x0, y0] = project(n, w);
  const [x1, y1] = project(s, e);
  ctx.strokeStyle = MAP_COLORS.bbox;
  ctx.setLineDash([4, 4]);
  ctx.strokeRect(x0, y0, x1 - x0, y1 - y0);
  ctx.setLineDash([]);
}

/** Green: all of its prizes left; amber: some claimed; grey: none left. */
function dropColor(remaining, capacity) {
  if (remaining <= 0) return MAP_COLORS.empty;
  return remaining >= capacity ? MAP_COLORS.full : MAP_COLORS.partial;
}

function drawPoints(ctx, d) {
  const perDrop = d.per_drop || 1;
  const radius = d.points.length > 1500 ? 2.5 : 3.5;
  for (const [lat, lng, remaining] of d.points) {
    const [x, y] = project(lat, lng);
    if (x < -radius || y < -radius || x > map.width + radius || y > map.height + radius) continue;
    ctx.fillStyle = dropColor(remaining, perDrop);
    ctx.beginPath();
    ctx.arc(x, y, radius, 0, 2 * Math.PI);
    ctx.fill();
  }
}

/** Grid cells (row 0 at the north of the box asked for): colour by what is left, opacity by count. */
function drawDensity(ctx, d) {
  const { south, west, north, east } = d.box;
  const dLat = (north - south) / d.rows;
  const dLng = (east - west) / d.cols;
  const most = d.cells.reduce((m, [count]) => Math.max(m, count), 1);
  for (let r = 0; r < d.rows; r++) {
    for (let c = 0; c < d.cols; c++) {
      const [count, remaining] = d.cells[r * d.cols + c];
      if (!count) continue;
      const [x0, y0] = project(north - r * dLat, west + c * dLng);
      const [x1, y1] = project(north - (r + 1) * dLat, west + (c + 1) * dLng);
      ctx.globalAlpha = 0.25 + (0.75 * Math.log1p(count)) / Math.log1p(most);
      ctx.fillStyle = dropColor(remaining, count * (d.per_drop || 1));
      ctx.fillRect(x0, y0, x1 - x0 + 0.5, y1 - y0 + 0.5);
    }
  }
  ctx.globalAlpha = 1;
}

function renderLegend() {
  const d = map.data;
  const swatch = (cls, label) => h("span", { class: "legend-item" }, h("span", { class: `swatch ${cls}` }), label);
  const perDrop = d?.per_drop ?? map.task?.per_drop;
  const legend = $("#map-legend");
  legend.replaceChildren();
  append(legend, [
    swatch("full", perDrop ? `all ${perDrop} left` : "all left"),
    swatch("partial", "partly claimed"),
    swatch("empty", "none left"),
    d?.mode === "density" && h("span", { class: "muted" }, `${d.rows}×${d.cols} density grid: darker cells hold more drops`),
    h("strong", { class: "legend-total" }, d ? `${fmtInt(d.total)} drops in view` : "", map.task ? ` · ${fmtInt(map.task.points)} in the task` : ""),
  ]);
}

// ---------------------------------------------------------------------------------------------
// Deliveries
// ---------------------------------------------------------------------------------------------

const deliveries = { timer: 0, inFlight: false };

function initDeliveries() {
  $("#lanes-table thead").replaceChildren(laneHead(["partner", "state"], [""]));
  $("#redrive-form").addEventListener("submit", (e) => {
    e.preventDefault();
    act(redriveOne, $("#redrive-win"));
  });
}

async function enterDeliveries() {
  $("#redrive-result").replaceChildren();
  clearInterval(deliveries.timer);
  deliveries.timer = setInterval(() => {
    if (!deliveries.inFlight) act(loadLanes);
  }, 2000);
  await loadLanes();
}

function leaveDeliveries() {
  clearInterval(deliveries.timer);
  deliveries.timer = 0;
}

async function loadLanes() {
  deliveries.inFlight = true;
  try {
    const res = await api("GET", "/delivery");
    const lanes = Array.isArray(res) ? res : res.lanes || [];
    if (currentPage === "deliveries") syncRows($("#lanes-table tbody"), lanes, (l) => l.partner, laneRow);
  } finally {
    deliveries.inFlight = false;
  }
}

function laneRow(lane) {
  const state = pausedBadge();
  const cells = laneCells();
  const button = gate(h("button", { type: "button", class: "redrive-dead" }, "Re-drive dead"), "publisher");
  button.addEventListener("click", () => act(async () => {
    const res = await api("POST", `/delivery/partners/${encodeURIComponent(lane.partner)}/redrive-dead`);
    flash(`Re-drove ${plural(res.redriven, "dead delivery", "dead deliveries")} of ${lane.partner}`, "ok");
    await loadLanes();
  }, button));
  const el = h("tr", { "data-lane": lane.partner },
    h("td", {}, h("code", {}, lane.partner)), h("td", {}, state.el), cells.cells, h("td", { class: "action" }, button));
  return {
    el,
    update(l) {
      state.update(l.paused);
      cells.update(l);
    },
  };
}

const redriveDelivery = (winId) => api("POST", `/delivery/${encodeURIComponent(winId)}/redrive`);

/** One line about a delivery record, as a re-drive answers it. */
function describeDelivery(rec) {
  const what = rec.amount_cents != null ? `${fmtInt(rec.amount_cents)} cents` : rec.sku ? `coupon ${rec.sku}` : rec.prize;
  return `Delivery ${rec.win_id} (${what}, prize ${rec.prize}) to ${rec.user} via ${rec.partner}: ` +
    `${rec.state}, ${plural(rec.attempts ?? 0, "attempt")}${rec.last_error ? `; last error: ${rec.last_error}` : ""}`;
}

async function redriveOne() {
  const result = $("#redrive-result");
  result.className = "result";
  try {
    const rec = await redriveDelivery($("#redrive-win-id").value.trim());
    result.classList.add("ok");
    result.textContent = describeDelivery(rec);
  } catch (e) {
    result.classList.add("error");
    result.textContent = e.message;
    throw e;
  }
}

// ---------------------------------------------------------------------------------------------
// Reconciliation
// ---------------------------------------------------------------------------------------------

const MISMATCH_KINDS = [
  ["over_issue", "Over-issued: wins above quota"],
  ["counter_differs", "Counter differs from wins"],
  ["wins_without_delivery", "Wins without a delivery"],
  ["deliveries_without_win", "Deliveries without a win"],
  ["duplicate_deliveries", "Duplicate deliveries"],
  ["dead", "Dead deliveries"],
];
const IDS_LISTED = 50;

function initReconciliation() {
  $("#recon-run").addEventListener("click", (e) => act(() => loadReport(true), e.currentTarget));
  $("#recon-redrive").addEventListener("click", (e) => act(redriveMismatches, e.currentTarget));
}

async function loadReport(run) {
  const status = $("#recon-status");
  $("#recon-result").textContent = "";
  status.textContent = run ? "Reconciling the ledgers…" : "Loading the latest report…";
  try {
    const report = await api("GET", `/reconciliation${run ? "?run=true" : ""}`);
    if (currentPage === "reconciliation") renderReport(report);
  } finally {
    status.textContent = "";
  }
}

async function redriveMismatches() {
  const res = await api("POST", "/reconciliation/redrive");
  await loadReport(false);
  $("#recon-result").textContent =
    `Created ${plural(res.created, "missing delivery", "missing deliveries")}, re-drove ${plural(res.redriven, "dead one")}`;
}

function renderReport(r) {
  const verdict = $("#recon-ok");
  verdict.className = `verdict ${r.ok ? "ok" : "bad"}`;
  verdict.dataset.ok = String(Boolean(r.ok));
  verdict.textContent = r.ok
    ? "OK: issued counters, wins and deliveries add up"
    : "Not reconciled: there are mismatches (see below)";
  const facts = [
    ["ran at", fmtTime(r.at_ms)],
    ["records read", fmtInt(r.records)],
    ["config SeqNo", r.config_seq],
    ["ledgers", (r.ledgers || []).join(", ") || "–"],
  ];
  $("#recon-summary").replaceChildren(...facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
  const mm = r.mismatches || {};
  $("#recon-prizes tbody").replaceChildren(...(r.prizes || []).map((p) => reconPrizeRow(p, mm)));
  renderDrawsTable(r.draws || {});
  renderMismatches(mm);
  const repaired = r.repaired_at_start || [];
  $("#recon-repaired").replaceChildren(repaired.length
    ? h("ul", { class: "id-list" }, repaired.map((s) => h("li", {}, h("code", {}, s))))
    : h("p", { class: "muted" }, "Nothing: RocksDB agreed with the ledger at start-up."));
}

/** Over-issue and counter lines name their prize first: `prize occurrence: …`. */
function reconPrizeRow(p, mm) {
  const named = (s) => s.startsWith(`${p.prize} `) || s.startsWith(`${p.prize}:`);
  const problem = p.counter !== p.wins || p.missing > 0 || p.dead > 0 ||
    (mm.over_issue || []).some(named) || (mm.counter_differs || []).some(named);
  const numbers = ["quota", "counter", "wins", "delivered", "pending", "deferred", "dead", "missing"];
  return h("tr", { class: problem ? "problem" : null, "data-prize": p.prize },
    h("td", {}, p.campaign), h("td", {}, p.round), h("td", {}, h("code", {}, p.prize)),
    numbers.map((k) => h("td", { class: "num" }, fmtInt(p[k]))));
}

function renderDrawsTable(draws) {
  const rounds = Object.keys(draws);
  const outcomes = [...new Set([...OUTCOMES, ...rounds.flatMap((r) => Object.keys(draws[r]))])];
  $("#recon-draws thead").replaceChildren(h("tr", {},
    h("th", {}, "round"), outcomes.map((o) => h("th", { class: "num" }, o)), h("th", { class: "num" }, "all")));
  $("#recon-draws tbody").replaceChildren(...rounds.map((r) => h("tr", {},
    h("td", {}, h("code", {}, r)),
    outcomes.map((o) => h("td", { class: "num" }, fmtInt(draws[r][o] || 0))),
    h("td", { class: "num" }, fmtInt(Object.values(draws[r]).reduce((a, b) => a + b, 0))))));
}

function renderMismatches(mm) {
  $("#recon-mismatches").replaceChildren(...MISMATCH_KINDS.map(([key, title]) => {
    const ids = mm[key] || [];
    return h("div", { class: `mismatch${ids.length ? " bad" : ""}`, "data-mismatch": key },
      h("h3", {}, title, h("span", { class: "count" }, ids.length)),
      ids.length
        ? h("ul", { class: "id-list" }, ids.slice(0, IDS_LISTED).map((id) =>
          h("li", {}, h("code", {}, id), key === "dead" ? redriveIdButton(id) : null)))
        : h("p", { class: "muted" }, "none"),
      ids.length > IDS_LISTED ? h("p", { class: "muted" }, `…and ${fmtInt(ids.length - IDS_LISTED)} more`) : null);
  }));
}

function redriveIdButton(id) {
  const button = gate(h("button", { type: "button", class: "small redrive-one" }, "Re-drive"), "publisher");
  button.addEventListener("click", () => act(async () => {
    const rec = await redriveDelivery(id);
    button.textContent = `✓ ${rec.state}`;
    button.title = "re-driven";
    button.disabled = true;
  }, button));
  return button;
}

// ---------------------------------------------------------------------------------------------
// Audit log
// ---------------------------------------------------------------------------------------------

async function loadAudit() {
  const { entries } = await api("GET", "/audit?limit=200");
  $("#audit-table tbody").replaceChildren(...(entries || []).map((e) => h("tr", {},
    h("td", { class: "nowrap" }, fmtTime(e.at)),
    h("td", {}, e.who),
    h("td", {}, e.role),
    h("td", {}, h("span", { class: "badge", "data-action": e.action }, e.action)),
    h("td", { class: "num" }, e.seq),
    h("td", {}, (e.changes || []).length
      ? h("ul", { class: "change-list compact" }, e.changes.map((c) => h("li", {}, c)))
      : h("span", { class: "muted" }, "–")))));
}

// ---------------------------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------------------------

function init() {
  $("#login-form").addEventListener("submit", onLogin);
  $("#logout").addEventListener("click", logout);
  $("#audit-refresh").addEventListener("click", (e) => act(loadAudit, e.currentTarget));
  window.addEventListener("hashchange", route);
  initDashboard();
  initEditor();
  initReview();
  initMap();
  initDeliveries();
  initReconciliation();
  boot();
}

init();
