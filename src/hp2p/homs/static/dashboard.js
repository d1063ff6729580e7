// hp2p HOMS dashboard: overlays, the R3 composition, and a live graph of one overlay's tree.
//
// Data comes only with a credential: the operator token (or an overlay-id and its admin key),
// typed once and kept in sessionStorage (gone when the tab closes). Fetches send it as
// `Authorization: Bearer` (or `X-HOMS-Admin-Key`); the monitoring WebSocket gets it in its
// `hello`, since a browser cannot put headers on a WebSocket. Initial state comes from
// GET /api/OverlayStatus (every member with its last report), changes from the monitoring
// events (add_peer, delete_peer, update_connection, log). Everything shown is set with
// textContent: peer-ids and titles are remote text.
"use strict";

const AUTH_KEY = "hp2p-dashboard-auth";
const HISTORY_PER_PEER = 50;      // events kept per peer for the side panel
const HISTORY_PEERS = 2000;       // peers with a kept history (oldest forgotten first)
const REPAIRS_KEPT = 20;
const STATUS_REFRESH_MS = 5000;   // suspects and last reports are re-read this often at most

const state = {
  auth: null,            // {token} or {overlayId, adminKey}
  overlays: [],          // GET /homs items
  selected: null,        // overlay-id shown in the graph
  overlay: null,         // its OverlayStatus "overlay"
  members: new Map(),    // peer-id -> OverlayStatus member
  links: new Map(),      // peer-id -> [{target, primary}] from its last report
  history: new Map(),    // peer-id -> [{at, text}] newest last
  repairs: [],           // [{at, text}] newest last
  peer: null,            // peer-id in the side panel
  socket: null,
  events: 0,
  cspViolations: [],     // what the Content-Security-Policy blocked (the tests expect none)
};
window.hp2pDashboard = state;
document.addEventListener("securitypolicyviolation", (ev) => {
  if (state.cspViolations.length < 20) {
    state.cspViolations.push(`${ev.effectiveDirective} ${ev.blockedURI} ${ev.sourceFile}:${ev.lineNumber}`);
  }
});

const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function fill(list, items, render, emptyText) {
  list.replaceChildren(...(items.length ? items.map(render) : [el("li", emptyText, "empty")]));
}

function facts(dl, pairs) {
  dl.replaceChildren();
  for (const [name, value] of pairs) dl.append(el("dt", name), el("dd", value ?? "—"));
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleTimeString() : "—";
}

function setStatus(text, ok) {
  const s = $("status");
  s.textContent = text;
  s.className = ok === undefined ? "" : ok ? "ok" : "bad";
}

// ------------------------------------------------------------------ credential and API

function headers() {
  const a = state.auth;
  if (a && a.token) return { Authorization: `Bearer ${a.token}` };
  if (a && a.adminKey) return { "X-HOMS-Admin-Key": a.adminKey };
  return {};
}

async function api(path) {
  const answer = await fetch(path, { headers: headers(), cache: "no-store" });
  const body = await answer.json().catch(() => ({}));
  if (!answer.ok) throw new Error(body.error || `${path}: HTTP ${answer.status}`);
  return body;
}

async function login(auth) {
  state.auth = auth;
  const query = auth.token ? "" : `?overlay_id=${encodeURIComponent(auth.overlayId)}`;
  try {
    await api(`/ui/check${query}`);
  } catch (err) {
    state.auth = null;
    sessionStorage.removeItem(AUTH_KEY);
    setStatus(`credential refused: ${err.message}`, false);
    return;
  }
  sessionStorage.setItem(AUTH_KEY, JSON.stringify(auth));
  $("login").hidden = true;
  $("logout").hidden = false;
  connect();
  await loadOverlays();
  const wanted = new URLSearchParams(location.hash.slice(1)).get("overlay");
  const first = wanted || (auth.overlayId ?? (state.overlays[0] || {})["overlay-id"]);
  if (first) await select(first);
}

function logout() {
  sessionStorage.removeItem(AUTH_KEY);
  location.reload();
}

// ------------------------------------------------------------------ overlays and composition

async function loadOverlays() {
  const items = await api("/homs");
  state.overlays = items.map((item) => item.overlay);
  renderOverlayList();
}

function renderOverlayList() {
  const byParent = new Map();
  for (const ov of state.overlays) {
    const parent = ov["parent-overlay-id"] || "";
    if (!byParent.has(parent)) byParent.set(parent, []);
    byParent.get(parent).push(ov);
  }
  const ids = new Set(state.overlays.map((ov) => ov["overlay-id"]));
  const tops = state.overlays.filter((ov) => !ids.has(ov["parent-overlay-id"]));
  const seen = new Set();
  const item = (ov) => {
    const li = el("li");
    const id = ov["overlay-id"];
    const button = el("button", ov.title || id);
    button.title = id;
    if (id === state.selected) button.classList.add("selected");
    button.addEventListener("click", () => select(id));
    button.append(el("span", ` ${ov["sub-type"]} · ${ov.status.num_peers}`, "kind"));
    li.append(button);
    const subs = (byParent.get(id) || []).filter((sub) => !seen.has(sub["overlay-id"]));
    subs.forEach((sub) => seen.add(sub["overlay-id"]));
    if (subs.length) {
      const ul = el("ul");
      ul.append(...subs.map(item));
      li.append(ul);
    }
    return li;
  };
  fill($("overlay-list"), tops, item, "no overlay");
}

async function loadComposition(overlayId) {
  const { composition } = await api(`/api/OverlayComposition?overlay_id=${encodeURIComponent(overlayId)}`);
  const rows = [];
  const walk = (entry, depth) => {
    rows.push({ entry, depth });
    for (const sub of entry["sub-overlays"] || []) walk(sub, depth + 1);
  };
  walk(composition, 0);
  fill($("composition"), rows, ({ entry, depth }) => {
    const source = entry["source-peer-id"] ? `, source ${entry["source-peer-id"]}` : "";
    const hidden = entry.hidden ? " (members hidden: closed)" : "";
    return el("li", `${"· ".repeat(depth)}${entry.title} [${entry["sub-type"]}] ` +
      `${entry["num_peers"]} peers${source}${hidden}`);
  }, "—");
}

// ------------------------------------------------------------------ the selected overlay

async function select(overlayId) {
  state.selected = overlayId;
  state.members.clear();
  state.links.clear();
  state.repairs = [];
  state.peer = null;
  $("peer-panel").hidden = true;
  history.replaceState(null, "", `#overlay=${encodeURIComponent(overlayId)}`);
  renderOverlayList();
  graph().elements().remove();
  await Promise.all([loadStatus(), loadComposition(overlayId).catch(() => {})]);
}

async function loadStatus() {
  const overlayId = state.selected;
  let answer;
  try {
    answer = await api(`/api/OverlayStatus?overlay_id=${encodeURIComponent(overlayId)}`);
  } catch (err) {
    $("graph-title").textContent = `${overlayId}: ${err.message}`;
    return;
  }
  if (overlayId !== state.selected) return;
  state.overlay = answer.overlay;
  state.members = new Map(answer.peers.map((m) => [m["peer-id"], m]));
  state.links = new Map(answer.peers.map((m) => [m["peer-id"], costmapLinks(m.costmap)]));
  redraw();
}

function costmapLinks(costmap) {
  if (!costmap) return [];
  const links = (costmap.primary || []).map((t) => ({ target: t, primary: true }));
  for (const key of ["outgoing_candidate", "incoming_candidate"]) {
    for (const t of costmap[key] || []) links.push({ target: t, primary: false });
  }
  return links;
}

let overlaysTimer = null;
function refreshOverlaysSoon() {
  if (overlaysTimer === null) {
    overlaysTimer = setTimeout(() => {
      overlaysTimer = null;
      loadOverlays().catch(() => {});
    }, 1000);
  }
}

let statusTimer = null;
function refreshStatusSoon() {
  if (statusTimer === null) {
    statusTimer = setTimeout(() => { statusTimer = null; loadStatus(); }, STATUS_REFRESH_MS);
  }
}

// ------------------------------------------------------------------ the graph

let cy = null;
function graph() {
  if (cy) return cy;
  cy = cytoscape({
    container: $("graph"),
    minZoom: 0.2,
    maxZoom: 3,
    style: [
      { selector: "node", style: {
        label: "data(label)", "font-size": 10, "text-valign": "bottom", "text-margin-y": 3,
        "background-color": "#3b6fd8", width: 22, height: 22, color: "#1d2330",
      } },
      { selector: "node.root", style: { "background-color": "#1d8a4a", shape: "diamond" } },
      { selector: "node.suspect", style: { "background-color": "#d8483b" } },
      { selector: "node.detached", style: { "background-color": "#9aa3b5" } },
      { selector: "node:selected", style: { "border-width": 3, "border-color": "#f0a30a" } },
      { selector: "edge", style: { width: 1.5, "line-color": "#8d97ab", "curve-style": "bezier" } },
      { selector: "edge.primary", style: { width: 2.5, "line-color": "#1d2330" } },
      { selector: "edge.candidate", style: { "line-style": "dashed", "line-color": "#a8b1c2",
        width: 1, opacity: 0.6 } },
    ],
  });
  cy.on("tap", "node", (event) => showPeer(event.target.id()));
  window.hp2pGraph = cy;
  return cy;
}

// Edges from both ends' last reports: a pair is shown once, primary if either end says so.
function edges() {
  const out = new Map();
  for (const [source, links] of state.links) {
    for (const { target, primary } of links) {
      if (!state.members.has(target) || target === source) continue;
      const key = source < target ? `${source}\u0000${target}` : `${target}\u0000${source}`;
      const old = out.get(key);
      out.set(key, { source, target, primary: primary || (old ? old.primary : false) });
    }
  }
  return out;
}

function rootOf() {
  const source = state.overlay && state.overlay["source-peer-id"];
  if (source && state.members.has(source)) return source;
  let best = null;
  for (const m of state.members.values()) {
    if (best === null || m["ticket-id"] < best["ticket-id"]) best = m;
  }
  return best && best["peer-id"];
}

function depths(root, pairs) {
  const next = new Map();
  for (const { source, target, primary } of pairs.values()) {
    if (!primary) continue;
    if (!next.has(source)) next.set(source, []);
    if (!next.has(target)) next.set(target, []);
    next.get(source).push(target);
    next.get(target).push(source);
  }
  const depth = new Map(root ? [[root, 0]] : []);
  const queue = root ? [root] : [];
  while (queue.length) {
    const at = queue.shift();
    for (const n of next.get(at) || []) {
      if (!depth.has(n)) { depth.set(n, depth.get(at) + 1); queue.push(n); }
    }
  }
  return depth;
}

function redraw() {
  const g = graph();
  const pairs = edges();
  const root = rootOf();
  const depth = depths(root, pairs);
  g.batch(() => {
    g.elements().remove();
    for (const m of state.members.values()) {
      const id = m["peer-id"];
      const d = depth.get(id);
      const classes = [id === root ? "root" : "", m.suspect_since ? "suspect" : "",
        d === undefined ? "detached" : ""].join(" ");
      g.add({ group: "nodes", data: { id, depth: d, label: `${id} (${d ?? "?"})` }, classes });
    }
    for (const [key, e] of pairs) {
      g.add({ group: "edges", classes: e.primary ? "primary" : "candidate",
        data: { id: key, source: e.source, target: e.target, primary: e.primary } });
    }
  });
  // laid out along primary paths only: candidate links would pull peers out of their level
  g.elements().not("edge.candidate").layout({ name: "breadthfirst", roots: root ? [root] : undefined,
    directed: false, spacingFactor: 1, animate: false, padding: 20 }).run();
  renderOverlay(depth);
  if (state.peer) showPeer(state.peer);
}

let redrawTimer = null;
function redrawSoon() {
  if (redrawTimer === null) redrawTimer = setTimeout(() => { redrawTimer = null; redraw(); }, 150);
}

function renderOverlay(depth) {
  const ov = state.overlay || {};
  const maxDepth = Math.max(0, ...depth.values());
  $("graph-title").textContent = `${ov.title ?? state.selected} — ${state.members.size} peers`;
  facts($("overlay-facts"), [
    ["overlay-id", ov["overlay-id"]], ["type", `${ov.type ?? ""} ${ov["sub-type"] ?? ""}`],
    ["access", ov["auth-type"]], ["peers", state.members.size],
    ["attached", `${depth.size} (depth ≤ ${maxDepth})`], ["source", ov["source-peer-id"]],
    ["events seen", state.events],
  ]);
  const suspects = [...state.members.values()].filter((m) => m.suspect_since);
  fill($("suspects"), suspects, (m) => el("li", `${m["peer-id"]} since ${when(m.suspect_since)}`), "none");
  fill($("repairs"), [...state.repairs].reverse(), (r) => el("li", `${r.at} ${r.text}`), "none seen");
}

// ------------------------------------------------------------------ side panel

function showPeer(peerId) {
  state.peer = peerId;
  const m = state.members.get(peerId);
  const links = state.links.get(peerId) || [];
  const d = cy && cy.getElementById(peerId).nonempty() ? cy.getElementById(peerId).data("depth") : undefined;
  if (cy) { cy.elements(":selected").unselect(); cy.getElementById(peerId).select(); }
  $("peer-panel").hidden = false;
  $("peer-name").textContent = peerId;
  facts($("peer-facts"), m ? [
    ["ticket", m["ticket-id"]], ["address", m.address], ["depth", d ?? "not attached"],
    ["primary", links.filter((l) => l.primary).map((l) => l.target).join(", ")],
    ["candidates", links.filter((l) => !l.primary).map((l) => l.target).join(", ")],
    ["last report / seen", when(m.last_seen)], ["expires at", when(m.expires_at)],
    ["suspect since", m.suspect_since ? when(m.suspect_since) : "no"],
  ] : [["state", "gone"]]);
  const kept = state.history.get(peerId) || [];
  fill($("peer-history"), [...kept].reverse(), (h) => el("li", `${h.at} ${h.text}`), "no event seen yet");
}

function remember(peerId, text) {
  if (!state.history.has(peerId) && state.history.size >= HISTORY_PEERS) {
    state.history.delete(state.history.keys().next().value);
  }
  const kept = state.history.get(peerId) || [];
  kept.push({ at: new Date().toLocaleTimeString(), text });
  if (kept.length > HISTORY_PER_PEER) kept.shift();
  state.history.set(peerId, kept);
  if (state.peer === peerId) showPeer(peerId);
}

// ------------------------------------------------------------------ monitoring events

function onEvent(ev) {
  if (ev.action === "error") { setStatus(`monitor refused: ${ev.reason}`, false); return; }
  state.events += 1;
  if (ev.type === "overlay" || ev.action === "add_peer" || ev.action === "delete_peer") {
    refreshOverlaysSoon();   // the list's member counts
  }
  if (ev.overlay_id !== state.selected) return;
  if (ev.action === "add_peer" && ev.node) {
    const id = ev.node.id;
    state.members.set(id, { "peer-id": id, "ticket-id": ev.node.ticket_id });
    state.links.set(id, []);
    remember(id, `joined with ticket ${ev.node.ticket_id}`);
    redrawSoon();
    refreshStatusSoon();
  } else if (ev.action === "delete_peer") {
    state.members.delete(ev.peer_id);
    state.links.delete(ev.peer_id);
    remember(ev.peer_id, "removed from the overlay");
    addRepair(`${ev.peer_id} removed`);
    redrawSoon();
  } else if (ev.action === "update_connection") {
    connectionChanged(ev.peer_id, ev.links || []);
  } else if (ev.type === "log" && ev.peer_id) {
    const text = String(ev.message || "");
    remember(ev.peer_id, text.startsWith("Overlay Report.") ? "reported" : text);
    if (text.startsWith("Overlay Report.")) refreshStatusSoon();
  }
}

function addRepair(text) {
  state.repairs.push({ at: new Date().toLocaleTimeString(), text });
  if (state.repairs.length > REPAIRS_KEPT) state.repairs.shift();
}

function connectionChanged(peerId, links) {
  const primaries = (ls) => ls.filter((l) => l.primary).map((l) => l.target).sort().join(", ");
  const before = primaries(state.links.get(peerId) || []);
  const now = links.map((l) => ({ target: l.target, primary: Boolean(l.primary) }));
  const after = primaries(now);
  state.links.set(peerId, now);
  if (before !== after) {
    const text = `primary ${before || "none"} → ${after || "none"}`;
    remember(peerId, text);
    if (before) addRepair(`${peerId}: ${text}`);
  } else {
    remember(peerId, "candidates changed");
  }
  redrawSoon();
}

let backoff = 500;
function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws`);
  state.socket = socket;
  socket.addEventListener("open", () => {
    const hello = { server: "hp2p-dashboard", action: "hello" };
    if (state.auth.token) hello.token = state.auth.token;
    else Object.assign(hello, { overlay_id: state.auth.overlayId, admin_key: state.auth.adminKey });
    socket.send(JSON.stringify(hello));
    setStatus("live", true);
    backoff = 500;
    if (state.selected) loadStatus();   // events may have been missed while away
  });
  socket.addEventListener("message", (msg) => {
    try { onEvent(JSON.parse(msg.data)); } catch (err) { console.warn("bad monitor event", err); }
  });
  socket.addEventListener("close", (ev) => {
    setStatus(`monitor closed (${ev.code} ${ev.reason || ""}); reconnecting`, false);
    if (state.auth) setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 10000);
  });
}

// ------------------------------------------------------------------ start

function start() {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    const overlayId = $("login-overlay").value.trim();
    const adminKey = $("admin-key").value;
    if (token) login({ token });
    else if (overlayId && adminKey) login({ overlayId, adminKey });
    else setStatus("give the operator token, or an overlay-id and its admin key", false);
  });
  $("logout").addEventListener("click", logout);
  let kept = null;
  try { kept = JSON.parse(sessionStorage.getItem(AUTH_KEY)); } catch { kept = null; }
  if (kept && (kept.token || (kept.overlayId && kept.adminKey))) login(kept);
}

start();
