// The status page: reads /api/v1/status and /api/v1/events every 2 s and draws them; the
// buttons call the control API with the bearer token (asked once, kept in this tab's
// sessionStorage). Everything from the API goes into the page as text, never as HTML.
"use strict";

const REFRESH_MS = 2000;
const TOKEN_KEY = "failover-responder-token";
const cards = new Map(); // service -> {root, body, result}: built once, body redrawn

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("data-")) e.setAttribute(k, v);
    else if (k === "onclick") e.addEventListener("click", v);
    else e[k] = v;
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

function ago(iso) {
  if (!iso) return "never";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

function time(iso) {
  const d = new Date(iso);
  if (isNaN(d)) return String(iso);
  const today = d.toDateString() === new Date().toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

function stateCell(state, extra) {
  return el("td", { class: `state-${state}` }, state, extra ? ` (${extra})` : "");
}

function table(head, rows) {
  if (rows.length === 0) return el("p", { class: "muted" }, "none");
  return el("table", { class: "grid" },
    el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
}

function labels(l) {
  return Object.entries(l || {}).filter(([k]) => k !== "alertname")
    .map(([k, v]) => `${k}=${v}`).join(" ");
}

function observed(o) {
  const containers = (o.containers || []).map((c) =>
    el("tr", {}, el("td", {}, "container"), el("td", {}, c.name), stateCell(c.state, c.health || c.reason)));
  const servers = (o.servers || []).map((s) =>
    el("tr", {}, el("td", {}, "HAProxy server"), el("td", {}, `${s.backend}/${s.server} @ ${s.api}`),
      stateCell(s.state, s.reason || (s.op_state ? `check ${s.op_state}` : ""))));
  const instances = (o.instances || []).map((i) =>
    el("tr", {}, el("td", {}, "EC2 instance"), el("td", {}, i.id), stateCell(i.state, i.reason)));
  return table(["kind", "name", "state"], [...containers, ...servers, ...instances]);
}

function steps(list) {
  const rows = (list || []).slice(-10).reverse().map((s) =>
    el("tr", {}, el("td", {}, time(s.at)), el("td", {}, s.step), stateCell(s.outcome, s.error),
      el("td", {}, `${s.duration_ms} ms`)));
  return table(["time", "step", "outcome", "took"], rows);
}

function notes(v) {
  const out = [];
  const st = v.state || {};
  if (st.override) out.push(el("span", { class: "pill warn", "data-override": st.override }, `override: ${st.override}`));
  out.push(v.converged ? el("span", { class: "pill ok" }, "converged") : el("span", { class: "pill warn" }, "converging"));
  if (st.step_in_flight) out.push(el("span", { class: "pill" }, `step: ${st.step_in_flight}`));
  if (v.held) out.push(el("span", { class: "pill warn" }, `held: ${v.held}`));
  for (const b of v.blocked || []) out.push(el("span", { class: "pill bad" }, `blocked: ${b}`));
  if (v.readiness && !v.readiness.ready) out.push(el("span", { class: "pill bad" }, "standby not ready"));
  if (v.consecutive_failures > 0) out.push(el("span", { class: "pill bad" }, `${v.consecutive_failures} failed passes`));
  return out;
}

// "waiting: server api/burst3@…: <reason>" once per reason, with how many wait on it: one
// unreachable HAProxy makes every slot wait for the same thing.
function waitingLines(waiting) {
  const byReason = new Map();
  for (const w of waiting || []) {
    const i = w.indexOf(": ");
    const reason = i < 0 ? w : w.slice(i + 2);
    byReason.set(reason, (byReason.get(reason) || 0) + 1);
  }
  return [...byReason].map(([reason, n]) => `waiting${n > 1 ? ` (${n} targets)` : ""}: ${reason}`);
}

function problems(v) {
  const ready = v.readiness;
  const items = [
    ...(v.last_error ? [`last error: ${v.last_error}`] : []),
    ...(ready && !ready.ready ? ready.problems.map((p) => `not ready (${p.check}): ${p.message}`) : []),
    ...(v.pending_steps || []).map((p) => `pending: ${p}`),
    ...waitingLines(v.waiting),
  ];
  return items.length ? el("ul", { class: "plain problems" }, items.map((i) => el("li", {}, i))) : null;
}

function updateTokenButton() {
  document.getElementById("token-button").textContent =
    sessionStorage.getItem(TOKEN_KEY) ? "Forget token" : "Set token";
}

function control(name, action, result) {
  return async () => {
    if ((action === "failover" || action === "failback") &&
        !window.confirm(`${action} ${name} now, whatever the alerts say? (resume hands it back to the alerts)`)) return;
    let token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) {
      token = window.prompt(`Bearer token to ${action} ${name}:`);
      if (!token) return;
      sessionStorage.setItem(TOKEN_KEY, token);
    }
    let text;
    try {
      const r = await fetch(`/api/v1/services/${encodeURIComponent(name)}/${action}`, {
        method: "POST", headers: { Authorization: `Bearer ${token}` },
      });
      const body = await r.json().catch(() => ({}));
      if (r.status === 401) sessionStorage.removeItem(TOKEN_KEY);
      text = r.ok ? `${action}: done` : `${action}: ${r.status} ${body.error || ""}`;
    } catch (e) {
      text = `${action}: ${e}`;
    }
    result.textContent = text;
    updateTokenButton();
    refresh();
  };
}

// A service's card: built once, so its buttons keep focus and never miss a click; only its
// body is redrawn.
function cardFor(name) {
  let c = cards.get(name);
  if (c) return c;
  const result = el("span", { class: "result muted", "aria-live": "polite" });
  const body = el("div", {});
  const root = el("div", { class: "card", id: `svc-${name}`, "data-service": name }, body,
    el("div", { class: "actions" },
      ["pause", "resume", "failover", "failback"].map((a) =>
        el("button", { type: "button", "data-action": a, onclick: control(name, a, result) }, a)),
      result));
  c = { root, body };
  cards.set(name, c);
  return c;
}

function draw(name, v) {
  const st = v.state || {};
  const mode = st.mode || (v.desired && v.desired.mode) || "unknown";
  const d = v.desired || {};
  const firing = (v.firing_alerts || []).map((a) =>
    el("li", {}, el("b", {}, (a.labels || {}).alertname || "?"), " ", labels(a.labels), el("span", { class: "muted" }, ` since ${ago(a.starts_at)}`)));
  const b = v.burst;
  const c = cardFor(name);
  c.root.setAttribute("data-mode", mode);
  c.body.replaceChildren(...[
    el("div", { class: "card-head" },
      el("h2", {}, name),
      el("span", { class: "mode", "data-mode": mode }, mode),
      el("span", { class: "muted" }, `since ${ago(st.since)}`),
      notes(v)),
    el("p", {}, el("b", {}, "Decision: "), d.reason || "not decided yet",
      el("span", { class: "muted" }, ` (last pass ${ago(v.last_reconcile_at)})`)),
    problems(v),
    el("div", { class: "cols" },
      el("div", {}, el("h3", {}, "Firing alerts"), firing.length ? el("ul", { class: "plain" }, firing) : el("p", { class: "muted" }, "none")),
      b ? el("div", {}, el("h3", {}, "Burst"),
        el("p", { class: "burst" }, `${b.open} open, ${b.target} wanted (min ${b.min}, max ${b.max})`,
          b.overloaded ? " · overloaded" : "")) : null),
    el("div", { class: "cols" },
      el("div", {}, el("h3", {}, "Observed"), observed(v.observed || {})),
      el("div", {}, el("h3", {}, "Last steps"), steps(v.last_steps))),
  ].filter((part) => part !== null));
  return c.root;
}

function timeline(events) {
  const rows = events.slice().reverse().map((e) =>
    el("tr", { "data-kind": e.kind }, el("td", {}, time(e.at)), el("td", {}, e.service || ""),
      el("td", {}, e.kind), el("td", {}, e.message)));
  document.querySelector("#timeline tbody").replaceChildren(...rows);
}

function header(doc) {
  const c = doc.cluster || {};
  document.getElementById("role").textContent = c.role ? `${c.role}${c.leader ? ` (leader ${c.leader})` : ""}` : "";
  const r = doc.alertmanager_resync || {};
  document.getElementById("resync").textContent = r.last_attempt
    ? `Alertmanager resync ${r.last_error ? "failing" : "ok"}, ${ago(r.last_attempt)}` : "";
  const cfg = doc.config || {};
  const loaded = cfg.last_reload_success_at ? `config loaded ${ago(cfg.last_reload_success_at)}` : "";
  const configEl = document.getElementById("config");
  configEl.textContent = cfg.last_reload_successful === false
    ? `config reload REFUSED ${ago(cfg.last_failed_reload_at)} (${(cfg.last_failed_reload_keys || []).join(", ")}); ${loaded} still runs`
    : loaded;
  configEl.classList.toggle("bad", cfg.last_reload_successful === false);
}

let inflight = false;
async function refresh() {
  if (inflight) return;
  inflight = true;
  const banner = document.getElementById("banner");
  try {
    const json = async (url) => {
      const r = await fetch(url, { cache: "no-store" });
      if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
      return r.json();
    };
    const [st, ev] = await Promise.all([json("/api/v1/status"), json("/api/v1/events?tail=30")]);
    header(st);
    const names = Object.keys(st.services || {});
    for (const gone of [...cards.keys()].filter((n) => !names.includes(n))) {
      cards.get(gone).root.remove();
      cards.delete(gone);
    }
    // Cards stay in the page (never detached, which would drop focus); only new ones go in.
    const container = document.getElementById("services");
    for (const n of names) {
      const root = draw(n, st.services[n]);
      if (root.parentNode !== container) container.append(root);
    }
    timeline((ev.events || []).slice(-30));
    document.getElementById("refreshed").textContent = `updated ${new Date().toLocaleTimeString()}`;
    banner.hidden = true;
  } catch (e) {
    console.error("status page refresh failed:", e);
    banner.textContent = `Cannot read the responder's API: ${e}`;
    banner.hidden = false;
  } finally {
    inflight = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const tb = document.getElementById("token-button");
  tb.addEventListener("click", () => {
    if (sessionStorage.getItem(TOKEN_KEY)) sessionStorage.removeItem(TOKEN_KEY);
    else {
      const t = window.prompt("Bearer token for the buttons:");
      if (t) sessionStorage.setItem(TOKEN_KEY, t);
    }
    updateTokenButton();
  });
  updateTokenButton();
  refresh();
  setInterval(refresh, REFRESH_MS);
});
