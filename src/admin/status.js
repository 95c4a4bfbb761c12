
"use strict";
// warren's status page: polls /api/status, /api/events and /api/connections, one request at a
// time, each abandoned after TIMEOUT_MS, so a slow or unreachable API never
// hangs the page: it says how old its numbers are instead.
const POLL_MS = 2000;
const TIMEOUT_MS = 3000;
const STALE_MS = 2 * POLL_MS + 1000;
const MAX_EVENTS = 200;
const MAX_CONNECTIONS = 50;

const $ = (id) => document.getElementById(id);
const rows = new Map(); // backend name -> its row's cells
const previous = new Map(); // backend name -> {now, bytes_in, bytes_out}
let lastEvent = 0;
let startedAt = null; // warren's start time: a restart numbers events from 1 again
let lastUpdate = 0; // Date.now() of the last good answer
let lastError = "";

// The token: kept for this tab only (sessionStorage), sent as a bearer token.
const tokenInput = $("token");
try {
  tokenInput.value = sessionStorage.getItem("warren-token") || "";
} catch (e) { /* storage refused: the field still works */ }
tokenInput.addEventListener("input", () => {
  try { sessionStorage.setItem("warren-token", tokenInput.value); } catch (e) { /* ignored */ }
});

async function get(path) {
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
  try {
    const r = await fetch(path, { signal: ctl.signal, cache: "no-store", headers: { Accept: "application/json" } });
    if (!r.ok) throw new Error(path + ": HTTP " + r.status + " " + (await r.text()).trim());
    return await r.json();
  } catch (e) {
    if (e.name === "AbortError") throw new Error(path + ": no answer within " + TIMEOUT_MS / 1000 + " s");
    throw e;
  } finally {
    clearTimeout(timer);
  }
}

function duration(s) {
  s = Math.max(0, Math.floor(s));
  if (s < 60) return s + "s";
  if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60) + "s";
  if (s < 86400) return Math.floor(s / 3600) + "h " + Math.floor((s % 3600) / 60) + "m";
  return Math.floor(s / 86400) + "d " + Math.floor((s % 86400) / 3600) + "h";
}

function rate(bytesPerSecond) {
  if (bytesPerSecond === null) return "…";
  const units = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
  let v = bytesPerSecond, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? Math.round(v) : v.toFixed(1)) + " " + units[i];
}

function clock(unix) {
  return new Date(unix * 1000).toLocaleTimeString([], { hour12: false });
}

// What the row says: the state, or "alarm" for a node up with a resource alarm.
function shownState(b) {
  return b.state === "up" && b.alarm ? "alarm" : b.state;
}

function why(b) {
  const st = shownState(b);
  if (st === "up") return "";
  if (st === "draining") return "drained by an operator";
  if (st === "disabled") return "disabled by an operator";
  return b.last_failure || "";
}

function cell(tr, cls) {
  const td = document.createElement("td");
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function row(name) {
  let r = rows.get(name);
  if (r) return r;
  const tr = document.createElement("tr");
  tr.dataset.backend = name;
  r = { tr };
  r.name = cell(tr, "name");
  r.node = cell(tr, "node");
  r.state = cell(tr, "state");
  r.why = cell(tr, "why");
  r.since = cell(tr, "since");
  r.active = cell(tr, "num active");
  r.total = cell(tr, "num total");
  r.inRate = cell(tr, "num in");
  r.outRate = cell(tr, "num out");
  r.latency = cell(tr, "num latency");
  const actions = cell(tr, "actions");
  for (const action of ["drain", "disable", "enable"]) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = action;
    b.dataset.action = action;
    b.dataset.backend = name;
    b.addEventListener("click", () => act(action, name));
    actions.appendChild(b);
  }
  $("backends").tBodies[0].appendChild(tr);
  rows.set(name, r);
  return r;
}

function renderBackends(s) {
  const seen = new Set();
  for (const b of s.backends) {
    seen.add(b.name);
    const r = row(b.name);
    r.name.textContent = b.name;
    const addr = document.createElement("span");
    addr.className = "addr";
    addr.textContent = b.address;
    r.name.appendChild(addr);
    r.node.textContent = b.node || "unknown";
    const ver = document.createElement("small");
    ver.textContent = b.rabbitmq_version ? "RabbitMQ " + b.rabbitmq_version : "version not read yet";
    r.node.appendChild(ver);
    const st = shownState(b);
    r.state.textContent = st;
    r.state.className = "state st-" + st;
    r.tr.className = "row-" + st;
    r.why.textContent = why(b);
    r.since.textContent = duration(s.now - b.changed_at);
    r.since.title = "since " + clock(b.changed_at);
    r.active.textContent = b.active_connections;
    r.total.textContent = b.total_connections;
    const p = previous.get(b.name);
    const dt = p ? s.now - p.now : 0;
    r.inRate.textContent = rate(dt > 0 ? Math.max(0, b.bytes_in - p.bytes_in) / dt : null);
    r.outRate.textContent = rate(dt > 0 ? Math.max(0, b.bytes_out - p.bytes_out) / dt : null);
    previous.set(b.name, { now: s.now, bytes_in: b.bytes_in, bytes_out: b.bytes_out });
    r.latency.textContent = b.last_check_seconds == null ? "…" : Math.round(b.last_check_seconds * 1000) + " ms";
  }
  for (const [name, r] of rows) {
    if (!seen.has(name)) { r.tr.remove(); rows.delete(name); previous.delete(name); }
  }
}

function renderListeners(s) {
  const body = $("listeners").tBodies[0];
  body.replaceChildren();
  for (const l of s.listeners) {
    if (!l.address) continue;
    const tr = document.createElement("tr");
    tr.dataset.listener = l.name;
    cell(tr).textContent = l.name;
    cell(tr).textContent = l.address;
    cell(tr, "num accepted").textContent = l.accepted;
    cell(tr, "num rejected").textContent = l.rejected;
    cell(tr, "num active").textContent = l.active;
    body.appendChild(tr);
  }
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n, i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return (i === 0 ? v : v.toFixed(1)) + " " + units[i];
}

// Heartbeat: the interval agreed, and the silence of each side when it is
// longer than that (a stuck client or a flaky network).
function heartbeat(c) {
  if (!c.handshake) return "not read";
  if (!c.heartbeat_seconds) return "off";
  let t = c.heartbeat_seconds + " s";
  const silent = Math.max(c.client_silent_seconds || 0, c.broker_silent_seconds || 0);
  if (silent > c.heartbeat_seconds) t += ", silent " + Math.floor(silent) + " s";
  const gaps = c.client_heartbeat_gaps + c.broker_heartbeat_gaps;
  if (gaps) t += ", " + gaps + (gaps === 1 ? " gap" : " gaps");
  return t;
}

function connState(c) {
  if (c.blocked) return "blocked: " + (c.blocked_reason || "by the broker");
  if (c.close) return "closing (" + c.close.side + " " + c.close.code + ")";
  if (c.handshake && !c.opened) return "handshake";
  return "open";
}

function renderConnections(page) {
  const body = $("connections").tBodies[0];
  body.replaceChildren();
  for (const c of page.connections) {
    const tr = document.createElement("tr");
    tr.dataset.id = c.id;
    cell(tr).textContent = c.client + (c.tls ? " (TLS)" : "");
    cell(tr).textContent = c.backend;
    cell(tr).textContent = c.vhost ?? "";
    cell(tr).textContent = c.user ?? "";
    cell(tr).textContent = [c.product, c.version].filter(Boolean).join(" ");
    cell(tr).textContent = c.connection_name ?? "";
    cell(tr, "num").textContent = duration(c.age_seconds);
    cell(tr, "num").textContent = bytes(c.bytes_in);
    cell(tr, "num").textContent = bytes(c.bytes_out);
    const hb = cell(tr, "num");
    hb.textContent = heartbeat(c);
    if (/silent/.test(hb.textContent)) hb.classList.add("bad");
    const st = cell(tr, "conn-state");
    st.textContent = connState(c);
    if (c.blocked) st.classList.add("blocked");
    body.appendChild(tr);
  }
  const shown = page.connections.length;
  $("conn-count").textContent = page.total === shown
    ? page.total + " open"
    : "the oldest " + shown + " of " + page.total;
}

function renderSummary(s) {
  $("version").textContent = s.version;
  $("uptime").textContent = duration(s.uptime_seconds);
  $("reload").textContent = (s.reload.ok ? "ok" : "FAILED (the running config stays)") +
    ", last success " + clock(s.reload.last_success);
  $("reload").className = s.reload.ok ? "" : "bad";
  $("token-label").hidden = !s.token_required;
}

function renderEvents(events) {
  const list = $("events");
  // Newest first from the API: insert oldest first at the top.
  for (const e of events.slice().reverse()) {
    if (e.id <= lastEvent) continue;
    lastEvent = e.id;
    const li = document.createElement("li");
    li.dataset.kind = e.kind;
    li.dataset.id = e.id;
    const t = document.createElement("time");
    t.textContent = clock(e.time);
    const kind = document.createElement("span");
    kind.className = "kind";
    kind.textContent = e.kind;
    li.append(t, kind, (e.backend ? e.backend + ": " : "") + e.message);
    if (e.by) {
      const by = document.createElement("span");
      by.className = "by";
      by.textContent = " (" + e.by + ")";
      li.appendChild(by);
    }
    list.prepend(li);
  }
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
}

function freshness() {
  const f = $("freshness");
  const age = lastUpdate ? (Date.now() - lastUpdate) / 1000 : null;
  if (age !== null && age * 1000 < STALE_MS) {
    f.textContent = "live, updated " + Math.floor(age) + " s ago";
    f.className = "fresh";
  } else {
    f.textContent = (age === null ? "STALE: no update yet" : "STALE: last update " + Math.floor(age) + " s ago") +
      (lastError ? " (" + lastError + ")" : "");
    f.className = "stale";
  }
}

async function poll() {
  try {
    const s = await get("/api/status");
    if (startedAt !== s.started) {
      startedAt = s.started;
      lastEvent = 0;
      $("events").replaceChildren();
      previous.clear();
    }
    renderSummary(s);
    renderBackends(s);
    renderListeners(s);
    lastUpdate = Date.now();
    lastError = "";
    renderEvents(await get("/api/events?limit=100&after=" + lastEvent));
    renderConnections(await get("/api/connections?limit=" + MAX_CONNECTIONS));
  } catch (e) {
    lastError = e.message;
  }
  freshness();
}

// One poll at a time: the next starts POLL_MS after the last one ended.
async function loop() {
  await poll();
  setTimeout(loop, POLL_MS);
}

async function post(path, what) {
  const out = $("outcome");
  const headers = { "Content-Type": "application/json" };
  const token = tokenInput.value.trim();
  if (token) headers.Authorization = "Bearer " + token;
  const ctl = new AbortController();
  const timer = setTimeout(() => ctl.abort(), 30000);
  out.className = "";
  out.textContent = what + ": sent…";
  try {
    const r = await fetch(path, { method: "POST", headers, body: "{}", signal: ctl.signal, cache: "no-store" });
    const text = (await r.text()).trim();
    if (r.ok) {
      out.className = "ok";
      let detail = "";
      try { const j = JSON.parse(text); if (j.state) detail = ", now " + j.state; } catch (e) { /* not JSON */ }
      out.textContent = what + ": done (HTTP " + r.status + detail + ")";
    } else {
      out.className = "error";
      let hint = "";
      if (r.status === 401) hint = tokenInput.value ? " (wrong token?)" : " (type the admin token above)";
      if (r.status === 421) hint = " (open this page at the admin API's own address or an allowed host)";
      let reason = text;
      try { const j = JSON.parse(text); if (j.error) reason = j.error; } catch (e) { /* plain text */ }
      out.textContent = what + ": refused, HTTP " + r.status + ": " + reason + hint;
    }
  } catch (e) {
    out.className = "error";
    out.textContent = what + ": failed: " + (e.name === "AbortError" ? "no answer within 30 s" : e.message);
  } finally {
    clearTimeout(timer);
  }
  poll();
}

function act(action, name) {
  const what = action + " " + name;
  const explain = {
    drain: "no new connections; its clients are closed, paced, and reconnect elsewhere",
    disable: "no new connections; its clients stay",
    enable: "back in rotation, driven by its health checks",
  }[action];
  if (!confirm(what + "?\n\n" + explain)) return;
  post("/api/backends/" + encodeURIComponent(name) + "/" + action, what);
}

$("reload-config").addEventListener("click", () => {
  if (!confirm("Reload warren's configuration file?")) return;
  post("/api/reload", "reload");
});

setInterval(freshness, 1000);
loop();
