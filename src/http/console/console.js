// sse-notify admin console. Served by the daemon's admin listener with the
// page; no build step, no library. Live data comes from the console's own
// stream ({base}/admin/events) read with fetch() so that the token goes in
// the Authorization header (EventSource cannot send headers); every action
// uses the ordinary admin API routes.
"use strict";

const BASE = document.documentElement.dataset.base || "";
const TOKEN_KEY = "sse-notify-console-token";
const PAGE_SIZE = 50;
const $ = (id) => document.getElementById(id);

let token = sessionStorage.getItem(TOKEN_KEY) || "";
let generation = 0; // bumps on every (re)connect or logout: stale work stops
let streamAbort = null;
let reconnectTimer = null;
let samples = [];
let windowSecs = 900;
let lastTick = null;
let selectedUser = null;
let selectedTopic = null;

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers(json) {
  const h = {};
  if (token) h.Authorization = "Bearer " + token;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

/** An admin API call: the envelope's data, or an ApiError naming the status. */
async function api(method, path, body) {
  const init = { method, headers: headers(body !== undefined), cache: "no-store" };
  if (body !== undefined) init.body = JSON.stringify(body);
  let resp;
  try {
    resp = await fetch(BASE + path, init);
  } catch (e) {
    throw new ApiError(0, "the node did not answer: " + e.message);
  }
  let json = null;
  try {
    json = await resp.json();
  } catch (e) {
    // not JSON: the status says enough
  }
  if (resp.status === 401) {
    askToken("The token was refused (401).");
    throw new ApiError(401, "missing or wrong token");
  }
  if (!resp.ok || !json) {
    throw new ApiError(resp.status, (json && json.message) || resp.statusText);
  }
  return json.data;
}

// ---- token ----------------------------------------------------------------

function askToken(message) {
  generation++;
  if (streamAbort) streamAbort.abort();
  clearTimeout(reconnectTimer);
  token = "";
  sessionStorage.removeItem(TOKEN_KEY);
  clearData();
  $("main").hidden = true;
  $("forget-token").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  setState("locked", "down");
  $("token-input").focus();
}

/** Nothing read with a token stays on screen once it is gone. */
function clearData() {
  samples = [];
  lastTick = null;
  selectedUser = null;
  selectedTopic = null;
  for (const id of ["nodes", "users", "user-connections", "topics", "topic-connections"]) {
    $(id).tBodies[0].replaceChildren();
  }
  for (const dd of document.querySelectorAll("#totals dd")) dd.textContent = "–";
  $("user-detail").hidden = true;
  $("topic-detail").hidden = true;
  $("serving").textContent = "";
  drawCharts();
}

$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token-input").value.trim();
  $("token-input").value = "";
  if (!token) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("login-error").textContent = "";
  connectLive();
});

$("forget-token").addEventListener("click", () => askToken(""));

// ---- the live stream ------------------------------------------------------

function setState(text, cls) {
  const el = $("live-state");
  el.textContent = text;
  el.className = "state " + (cls || "");
}

async function connectLive() {
  const gen = ++generation;
  if (streamAbort) streamAbort.abort();
  clearTimeout(reconnectTimer);
  const ctrl = new AbortController();
  streamAbort = ctrl;
  setState("connecting");
  let resp;
  try {
    resp = await fetch(BASE + "/admin/events", {
      headers: headers(false),
      signal: ctrl.signal,
      cache: "no-store",
    });
  } catch (e) {
    if (gen === generation) retryLive("node unreachable");
    return;
  }
  if (gen !== generation) return;
  if (resp.status === 401) {
    askToken(token ? "The token was refused (401): nothing is shown without the right one." : "");
    return;
  }
  if (!resp.ok) {
    retryLive("error " + resp.status);
    return;
  }
  $("login").hidden = true;
  $("main").hidden = false;
  $("forget-token").hidden = !token;
  setState("live", "live");
  refreshUsers();
  refreshTopics();
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  // Ticks come every second: a silent stream is a dead one.
  let watchdog = setTimeout(() => ctrl.abort(), 20000);
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done || gen !== generation) break;
      clearTimeout(watchdog);
      watchdog = setTimeout(() => ctrl.abort(), 20000);
      buf += value.replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const frame = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        handleFrame(frame);
      }
    }
  } catch (e) {
    // aborted or the connection broke: reconnect below
  }
  clearTimeout(watchdog);
  if (gen === generation) retryLive("reconnecting");
}

function retryLive(why) {
  setState(why, "down");
  clearTimeout(reconnectTimer);
  reconnectTimer = setTimeout(connectLive, 2000);
}

function handleFrame(frame) {
  let event = "message";
  const data = [];
  for (const line of frame.split("\n")) {
    if (line === "" || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (data.length === 0) return;
  let obj;
  try {
    obj = JSON.parse(data.join("\n"));
  } catch (e) {
    return;
  }
  if (event === "hello") onHello(obj);
  else if (event === "tick") onTick(obj);
}

function onHello(h) {
  samples = h.samples || [];
  windowSecs = h.window_secs || 900;
  $("serving").textContent = "node " + h.node_id;
  drawCharts();
}

let lastCounts = "";
let lastUsersRefresh = 0;

function onTick(t) {
  lastTick = t;
  samples.push(t.sample);
  const oldest = t.t - windowSecs;
  while (samples.length && samples[0].t < oldest) samples.shift();
  renderTotals(t);
  renderNodes(t);
  scheduleCharts();
  // The user and topic lists follow the registry: their current pages
  // only, when the totals moved, and every 5 s anyway (a user may come as
  // another goes).
  const counts = t.users + "/" + t.connections;
  const now = Date.now();
  if ((counts !== lastCounts && now - lastUsersRefresh > 1000) || now - lastUsersRefresh > 5000) {
    lastCounts = counts;
    refreshUsers();
    refreshTopics();
  }
}

// ---- totals, nodes --------------------------------------------------------

const fmtInt = (n) => (n === null || n === undefined ? "?" : Number(n).toLocaleString("en-US"));
const fmtRate = (x) => (x >= 100 ? Math.round(x).toLocaleString("en-US") : (Math.round(x * 10) / 10).toString());

function fmtAge(secs) {
  secs = Math.max(0, Math.round(secs));
  if (secs < 60) return secs + " s";
  const m = Math.floor(secs / 60);
  if (m < 60) return m + " min";
  const h = Math.floor(m / 60);
  if (h < 24) return h + " h " + (m % 60) + " min";
  return Math.floor(h / 24) + " d " + (h % 24) + " h";
}

function fmtTime(unix) {
  return new Date(unix * 1000).toLocaleString();
}

function renderTotals(t) {
  $("total-users").textContent = fmtInt(t.users);
  $("total-connections").textContent = fmtInt(t.connections);
  $("total-nodes").textContent = fmtInt(t.nodes.length);
  $("total-live").textContent = fmtInt(t.sample.live);
  $("rate-connects").textContent = fmtRate(t.sample.connects);
  $("rate-disconnects").textContent = fmtRate(t.sample.disconnects);
  $("rate-sent").textContent = fmtRate(t.sample.sent);
  $("rate-delivered").textContent = fmtRate(t.sample.delivered);
  $("rate-drops").textContent = fmtRate(t.sample.drops);
  $("registry-error").textContent = t.error ? "Registry unreachable from this node: " + t.error : "";
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function health(v) {
  if (v === null || v === undefined) return ["–", ""];
  return [v, v === "ok" ? "ok" : "bad"];
}

function renderNodes(t) {
  const rows = t.nodes.map((n) => {
    const tr = document.createElement("tr");
    tr.dataset.node = n.node_id;
    if (n.node_id === t.node_id) tr.classList.add("me");
    const age = t.t - n.seen_at;
    if (age > 5) tr.classList.add("stale");
    const [redis, redisCls] = health(n.redis);
    const [bus, busCls] = health(n.bus);
    tr.append(
      cell(n.node_id),
      cell(n.version),
      cell(n.engine === "memory" ? "embedded" : n.engine),
      cell(fmtAge(t.t - n.started_at)),
      cell(redis, redisCls),
      cell(bus, busCls),
      cell(fmtInt(n.live_streams) + (n.max_streams ? " / " + fmtInt(n.max_streams) : "")),
      cell(fmtAge(age) + " ago"),
    );
    return tr;
  });
  $("nodes").tBodies[0].replaceChildren(...rows);
}

// ---- chart ----------------------------------------------------------------

const RATE_SERIES = [
  ["connects", "#1d7a3a"],
  ["disconnects", "#c46a00"],
  ["sent", "#7b3fb8"],
  ["delivered", "#2459c4"],
  ["drops", "#b3261e"],
];
let chartPending = false;

function scheduleCharts() {
  if (chartPending) return;
  chartPending = true;
  requestAnimationFrame(() => {
    chartPending = false;
    drawCharts();
  });
}

function drawCharts() {
  drawChart($("chart-live"), [["live", "#2459c4"]]);
  drawChart($("chart-rates"), RATE_SERIES);
}

/** Lines over the last window: x is time (now at the right), y from 0 to the max. */
function drawChart(canvas, series) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 600;
  const h = canvas.clientHeight || 160;
  if (canvas.width !== Math.round(w * ratio)) canvas.width = Math.round(w * ratio);
  if (canvas.height !== Math.round(h * ratio)) canvas.height = Math.round(h * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const pad = { l: 44, r: 8, t: 8, b: 18 };
  const now = samples.length ? samples[samples.length - 1].t : Date.now() / 1000;
  const from = now - windowSecs;
  let max = 0;
  for (const s of samples) for (const [k] of series) max = Math.max(max, s[k] || 0);
  max = max <= 0 ? 1 : niceMax(max);
  const x = (t) => pad.l + ((t - from) / windowSecs) * (w - pad.l - pad.r);
  const y = (v) => h - pad.b - (v / max) * (h - pad.t - pad.b);
  ctx.strokeStyle = "#d9dde4";
  ctx.fillStyle = "#5c6577";
  ctx.font = "11px system-ui, sans-serif";
  ctx.lineWidth = 1;
  for (const f of [0, 0.5, 1]) {
    const yy = Math.round(y(max * f)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(pad.l, yy);
    ctx.lineTo(w - pad.r, yy);
    ctx.stroke();
    ctx.fillText(fmtRate(max * f), 4, yy + 4);
  }
  ctx.fillText("-" + Math.round(windowSecs / 60) + " min", pad.l, h - 4);
  ctx.fillText("now", w - pad.r - 22, h - 4);
  ctx.lineWidth = 1.5;
  for (const [k, color] of series) {
    ctx.strokeStyle = color;
    ctx.beginPath();
    let started = false;
    let prevT = null;
    for (const s of samples) {
      // A gap (the node was away) is not drawn as a line across it.
      if (prevT !== null && s.t - prevT > 5) started = false;
      const px = x(s.t);
      const py = y(s[k] || 0);
      if (started) ctx.lineTo(px, py);
      else ctx.moveTo(px, py);
      started = true;
      prevT = s.t;
    }
    ctx.stroke();
  }
}

function niceMax(v) {
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

window.addEventListener("resize", scheduleCharts);

// ---- users ----------------------------------------------------------------

// Paging: the cursors of the pages before the current one, the current
// page's cursor ("" for the first) and the next one's.
let cursors = [];
let cursor = "";
let nextCursor = null;
let usersInFlight = false;
let usersAgain = false;

async function refreshUsers() {
  if (usersInFlight) {
    usersAgain = true;
    return;
  }
  usersInFlight = true;
  lastUsersRefresh = Date.now();
  const gen = generation;
  try {
    const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
    const prefix = $("user-search").value.trim();
    if (prefix) q.set("prefix", prefix);
    if (cursor) q.set("cursor", cursor);
    const data = await api("GET", "/admin/users?" + q.toString());
    if (gen !== generation) return;
    $("users-error").textContent = "";
    renderUsers(data);
    if (selectedUser !== null) await showUser(selectedUser, true);
  } catch (e) {
    if (e.status !== 401 && gen === generation) $("users-error").textContent = e.message;
  } finally {
    usersInFlight = false;
    if (usersAgain) {
      usersAgain = false;
      refreshUsers();
    }
  }
}

function renderUsers(data) {
  nextCursor = data.next_cursor || null;
  const rows = data.users.map((u) => {
    const tr = document.createElement("tr");
    tr.dataset.user = u.username;
    if (u.username === selectedUser) tr.classList.add("selected");
    const name = document.createElement("td");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "link";
    b.textContent = u.username;
    b.addEventListener("click", () => showUser(u.username, false));
    name.append(b);
    tr.append(name, cell(fmtInt(u.connection_count)));
    return tr;
  });
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = cell($("user-search").value.trim() ? "no user with that name" : "no connections");
    td.colSpan = 2;
    tr.append(td);
    rows.push(tr);
  }
  $("users").tBodies[0].replaceChildren(...rows);
  $("users-prev").disabled = cursors.length === 0;
  $("users-next").disabled = !nextCursor;
  const total = data.user_count;
  const searching = $("user-search").value.trim() !== "";
  $("users-page").textContent =
    "page " + (cursors.length + 1) +
    (!searching && total !== null && total !== undefined ? " of " + Math.max(1, Math.ceil(total / PAGE_SIZE)) : "");
}

$("users-next").addEventListener("click", () => {
  if (!nextCursor) return;
  cursors.push(cursor);
  cursor = nextCursor;
  refreshUsers();
});
$("users-prev").addEventListener("click", () => {
  if (cursors.length === 0) return;
  cursor = cursors.pop();
  refreshUsers();
});

let searchTimer = null;
$("user-search").addEventListener("input", () => {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(() => {
    cursors = [];
    cursor = "";
    refreshUsers();
  }, 250);
});

async function showUser(name, quiet) {
  if (!quiet) $("detail-result").textContent = "";
  selectedUser = name;
  for (const tr of $("users").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.user === name);
  const gen = generation;
  let data;
  try {
    data = await api("GET", "/admin/connections/" + encodeURIComponent(name));
  } catch (e) {
    if (e.status !== 401) $("detail-result").textContent = e.message;
    return;
  }
  if (gen !== generation || selectedUser !== name) return;
  $("detail-name").textContent = name + " (" + data.connection_count + ")";
  const now = lastTick ? lastTick.t : Date.now() / 1000;
  const rows = data.connections.map((c) => {
    const tr = document.createElement("tr");
    tr.dataset.connection = c.connection_id;
    tr.append(
      cell(c.connection_id),
      cell(c.node_id || "?"),
      cell(fmtTime(c.connection_time)),
      cell(fmtAge(now - c.last_heartbeat) + " ago"),
    );
    return tr;
  });
  $("user-connections").tBodies[0].replaceChildren(...rows);
  $("disconnect-user").disabled = data.connection_count === 0;
  $("user-detail").hidden = false;
  $("send-to").value = $("send-to").value || name;
}

$("disconnect-user").addEventListener("click", async () => {
  const name = selectedUser;
  if (name === null) return;
  const n = $("user-connections").tBodies[0].rows.length;
  const ok = await confirmDialog(
    `Disconnect ${name}: close ${n === 1 ? "its live stream" : "its " + n + " live streams"} on every node and remove the records?`,
  );
  if (!ok) return;
  try {
    const data = await api("DELETE", "/connections/" + encodeURIComponent(name) + "/");
    $("detail-result").textContent = `Disconnected ${name}: ${data.connection_count} connection(s) closed.`;
  } catch (e) {
    $("detail-result").textContent = e.message;
  }
  refreshUsers();
  refreshTopics();
});

// ---- topics ---------------------------------------------------------------

// Paging as for the users.
let topicCursors = [];
let topicCursor = "";
let topicNextCursor = null;
let topicsInFlight = false;
let topicsAgain = false;

async function refreshTopics() {
  if (topicsInFlight) {
    topicsAgain = true;
    return;
  }
  topicsInFlight = true;
  const gen = generation;
  try {
    const q = new URLSearchParams({ limit: String(PAGE_SIZE) });
    const prefix = $("topic-search").value.trim();
    if (prefix) q.set("prefix", prefix);
    if (topicCursor) q.set("cursor", topicCursor);
    const data = await api("GET", "/admin/topics?" + q.toString());
    if (gen !== generation) return;
    $("topics-error").textContent = "";
    renderTopics(data);
    if (selectedTopic !== null) await showTopic(selectedTopic, true);
  } catch (e) {
    if (e.status !== 401 && gen === generation) $("topics-error").textContent = e.message;
  } finally {
    topicsInFlight = false;
    if (topicsAgain) {
      topicsAgain = false;
      refreshTopics();
    }
  }
}

function renderTopics(data) {
  topicNextCursor = data.next_cursor || null;
  const rows = data.topics.map((t) => {
    const tr = document.createElement("tr");
    tr.dataset.topic = t.topic;
    if (t.topic === selectedTopic) tr.classList.add("selected");
    const name = document.createElement("td");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "link";
    b.textContent = t.topic;
    b.addEventListener("click", () => showTopic(t.topic, false));
    name.append(b);
    tr.append(name, cell(fmtInt(t.connection_count)), cell(fmtInt(t.user_count)));
    return tr;
  });
  if (rows.length === 0) {
    const tr = document.createElement("tr");
    const td = cell($("topic-search").value.trim() ? "no followed topic with that name" : "no stream follows a topic");
    td.colSpan = 3;
    tr.append(td);
    rows.push(tr);
  }
  $("topics").tBodies[0].replaceChildren(...rows);
  $("topics-prev").disabled = topicCursors.length === 0;
  $("topics-next").disabled = !topicNextCursor;
  const total = data.topic_count;
  const searching = $("topic-search").value.trim() !== "";
  $("topics-page").textContent =
    "page " + (topicCursors.length + 1) +
    (!searching && total !== null && total !== undefined ? " of " + Math.max(1, Math.ceil(total / PAGE_SIZE)) : "");
}

$("topics-next").addEventListener("click", () => {
  if (!topicNextCursor) return;
  topicCursors.push(topicCursor);
  topicCursor = topicNextCursor;
  refreshTopics();
});
$("topics-prev").addEventListener("click", () => {
  if (topicCursors.length === 0) return;
  topicCursor = topicCursors.pop();
  refreshTopics();
});

let topicSearchTimer = null;
$("topic-search").addEventListener("input", () => {
  clearTimeout(topicSearchTimer);
  topicSearchTimer = setTimeout(() => {
    topicCursors = [];
    topicCursor = "";
    refreshTopics();
  }, 250);
});

async function showTopic(name, quiet) {
  if (!quiet) $("topic-detail-result").textContent = "";
  selectedTopic = name;
  for (const tr of $("topics").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.topic === name);
  const gen = generation;
  let data;
  try {
    data = await api("GET", "/admin/topics/" + encodeURIComponent(name));
  } catch (e) {
    if (e.status !== 401) $("topic-detail-result").textContent = e.message;
    return;
  }
  if (gen !== generation || selectedTopic !== name) return;
  const conns = data.connection_count;
  const users = data.user_count;
  $("topic-detail-name").textContent =
    `${name} (${conns} connection${conns === 1 ? "" : "s"} of ${users} user${users === 1 ? "" : "s"})`;
  const rows = data.connections.map((c) => {
    const tr = document.createElement("tr");
    tr.dataset.connection = c.connection_id;
    tr.append(cell(c.username), cell(c.connection_id), cell(c.node_id || "?"), cell(fmtTime(c.connection_time)));
    return tr;
  });
  $("topic-connections").tBodies[0].replaceChildren(...rows);
  $("topic-detail").hidden = false;
  if (!quiet) {
    // Ready to send to it: the topic chosen in the send form.
    $("send-topic").value = name;
    document.querySelector("input[name=target][value=topic]").checked = true;
    targetChanged();
  }
}

// ---- send -----------------------------------------------------------------

const EVENT_NAME = /^[A-Za-z0-9_.:-]{1,64}$/;
const TOPIC_NAME = /^[A-Za-z0-9_.:\/@=-]{1,128}$/;

function target() {
  return document.querySelector("input[name=target]:checked").value;
}

function targetChanged() {
  const t = target();
  $("send-to").disabled = t === "broadcast" || t === "topic";
  $("send-topic").disabled = t !== "topic";
}

for (const r of document.querySelectorAll("input[name=target]")) {
  r.addEventListener("change", targetChanged);
}

/** The send body, or an error naming the field (as the API would). */
function sendBody() {
  const body = {};
  const to = $("send-to").value.trim();
  const t = target();
  if (t === "topic") {
    const topic = $("send-topic").value.trim();
    if (!TOPIC_NAME.test(topic)) return { error: "topic: 1 to 128 characters of A-Z a-z 0-9 _ . : / @ = -" };
    body.topic = topic;
  } else if (t !== "broadcast") {
    if (!to) return { error: "to: name the user (or choose broadcast)" };
    body.to = to;
    body.all_connections = t === "user";
  }
  const event = $("send-event").value.trim();
  if (!EVENT_NAME.test(event)) return { error: "event: 1 to 64 characters of A-Z a-z 0-9 _ . : -" };
  body.event = event;
  const text = $("send-data").value;
  try {
    body.data = JSON.parse(text);
  } catch (e) {
    return { error: "data: not valid JSON (" + e.message + ")" };
  }
  return { body };
}

$("send-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("send-error").textContent = "";
  $("send-result").textContent = "";
  const { body, error } = sendBody();
  if (error) {
    $("send-error").textContent = error;
    return;
  }
  try {
    const d = await api("POST", "/send/", body);
    const who = d.topic ? "topic " + d.topic : d.to === null || d.to === undefined ? "broadcast" : d.to;
    $("send-result").textContent =
      `Sent ${d.event} to ${who}: message ${d.message_id}, ${d.connections} connection(s).`;
    $("send-result").dataset.messageId = d.message_id;
    $("send-result").dataset.connections = String(d.connections);
  } catch (e) {
    $("send-error").textContent = e.status ? `${e.status}: ${e.message}` : e.message;
  }
});

// ---- maintenance ------------------------------------------------------------

function maintenanceResult(text, error) {
  $("maintenance-result").textContent = error ? "" : text;
  $("maintenance-error").textContent = error ? text : "";
}

$("cleanup-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const raw = $("cleanup-timeout").value.trim();
  const body = {};
  if (raw !== "") {
    const n = Number(raw);
    if (!Number.isFinite(n) || n < 0) {
      maintenanceResult("timeout: a number of seconds, 0 or more", true);
      return;
    }
    body.timeout = n;
  }
  try {
    const d = await api("POST", "/cleanup/", body);
    maintenanceResult(`Cleanup: ${d.connection_count} stale record(s) of ${d.user_count} user(s) removed.`);
  } catch (e) {
    maintenanceResult(e.message, true);
  }
  refreshUsers();
  refreshTopics();
});

$("full-clear").addEventListener("click", async () => {
  const users = lastTick ? fmtInt(lastTick.users) : "?";
  const conns = lastTick ? fmtInt(lastTick.connections) : "?";
  const ok = await confirmDialog(
    `Full clear: remove all ${conns} connection record(s) of ${users} user(s), on every node? ` +
      "Live streams stay open and their nodes write them back; only stale records stay gone.",
  );
  if (!ok) return;
  try {
    const d = await api("POST", "/connections/");
    maintenanceResult(`Full clear: ${d.connection_count} record(s) of ${d.user_count} user(s) removed.`);
  } catch (e) {
    maintenanceResult(e.message, true);
  }
  refreshUsers();
  refreshTopics();
});

// ---- confirmation dialog --------------------------------------------------

function confirmDialog(text) {
  const dlg = $("confirm");
  $("confirm-text").textContent = text;
  return new Promise((resolve) => {
    const done = (v) => {
      $("confirm-ok").onclick = null;
      $("confirm-cancel").onclick = null;
      dlg.onclose = null;
      if (dlg.open) dlg.close();
      resolve(v);
    };
    $("confirm-ok").onclick = () => done(true);
    $("confirm-cancel").onclick = () => done(false);
    dlg.onclose = () => done(false);
    dlg.showModal();
  });
}

connectLive();
