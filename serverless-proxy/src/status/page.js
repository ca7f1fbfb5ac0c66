// The status page: reads GET /v1/events (server-sent events) with fetch, so that the admin
// token can go in an Authorization header (EventSource cannot send one), and renders each
// `state` frame with DOM calls (textContent only: app data is never parsed as HTML).
"use strict";

const TOKEN_KEY = "serverless-admin-token";
const $ = (id) => document.getElementById(id);
let token = sessionStorage.getItem(TOKEN_KEY);
let lastState = null;

function headers() {
  return token ? { Authorization: "Bearer " + token } : {};
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.includes("-") || k === "scope" || k === "type") node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms >= 1000) return (ms / 1000).toFixed(ms >= 10000 ? 0 : 1) + " s";
  return (ms < 10 ? ms.toFixed(1) : Math.round(ms)) + " ms";
}

function fmtAge(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

function setConn(text, cls) {
  const c = $("conn");
  c.textContent = text;
  c.className = cls || "";
}

function stat(label, value, field) {
  return el("div", { class: "stat" },
    el("span", { class: "label" }, label),
    el("span", { class: "value", "data-field": field }, value));
}

function seriesSvg(series) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const n = series.requests.length;
  const max = Math.max(1, ...series.requests);
  svg.setAttribute("viewBox", `0 0 ${n * 10} 100`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "series");
  svg.setAttribute("role", "img");
  const total = series.requests.reduce((a, b) => a + b, 0);
  svg.setAttribute("aria-label", `${total} requests in the last ${n * series.bin_s} s, ${series.bin_s} s per bar`);
  series.requests.forEach((v, i) => {
    const h = (v / max) * 100;
    const e = (series.errors[i] / max) * 100;
    const r = document.createElementNS(ns, "rect");
    r.setAttribute("x", i * 10 + 1); r.setAttribute("width", 8);
    r.setAttribute("y", 100 - h); r.setAttribute("height", h);
    svg.append(r);
    if (e > 0) {
      const er = document.createElementNS(ns, "rect");
      er.setAttribute("class", "err");
      er.setAttribute("x", i * 10 + 1); er.setAttribute("width", 8);
      er.setAttribute("y", 100 - e); er.setAttribute("height", e);
      svg.append(er);
    }
  });
  return svg;
}

function coldTable(cold) {
  const max = Math.max(1, ...cold.counts);
  const body = el("tbody");
  cold.counts.forEach((n, i) => {
    const label = i < cold.bounds_ms.length ? "≤ " + fmtMs(cold.bounds_ms[i])
      : "> " + fmtMs(cold.bounds_ms[cold.bounds_ms.length - 1]);
    const bar = el("span");
    bar.style.width = (100 * n / max) + "%";
    if (!n) bar.className = "zero";
    body.append(el("tr", {}, el("th", { scope: "row" }, label), el("td", { class: "num" }, n),
      el("td", { class: "bar", "aria-hidden": "true" }, bar)));
  });
  return el("table", { class: "bars" },
    el("caption", {}, `Cold starts in the last ${cold.window_s / 60} min: ${cold.count}`),
    el("thead", {}, el("tr", {}, el("th", { scope: "col" }, "Took"), el("th", { scope: "col", class: "num" }, "Count"),
      el("th", { scope: "col", "aria-hidden": "true" }))),
    body);
}

function phasesText(cs) {
  if (!cs) return null;
  return el("span", { class: "phases" },
    " (" + cs.phases.map(([name, ms]) => `${name} ${fmtMs(ms)}`).join(" · ") + ")");
}

function instancesTable(app) {
  const body = el("tbody");
  for (const i of app.instances) {
    const button = el("button", { class: "instance-button", type: "button", "data-logs": i.id,
      "aria-label": `Logs of instance ${i.id}` }, i.id);
    button.addEventListener("click", () => showLogs(app.name, i.id));
    body.append(el("tr", { "data-instance": i.id },
      el("td", {}, button),
      el("td", { class: `state state-${i.state}`, "data-field": "state" }, i.state),
      el("td", { class: "num" }, fmtAge(i.age_ms)),
      el("td", { class: "num", "data-field": "in_flight" }, i.in_flight),
      el("td", {}, i.cold_start ? fmtMs(i.cold_start.total_ms) : (i.state === "starting" ? "starting…" : "–"),
        phasesText(i.cold_start))));
  }
  if (!app.instances.length) {
    body.append(el("tr", {}, el("td", { colSpan: 5, class: "empty" }, "No instances: the next request starts one.")));
  }
  return el("table", { class: "instances" },
    el("caption", {}, `Instances (queued requests: ${app.queued})`),
    el("thead", {}, el("tr", {},
      el("th", { scope: "col" }, "Instance"), el("th", { scope: "col" }, "State"),
      el("th", { scope: "col", class: "num" }, "Age"), el("th", { scope: "col", class: "num" }, "In flight"),
      el("th", { scope: "col" }, "Cold start (phases)"))),
    body);
}

function renderApp(app) {
  const s = app.stats;
  const l = app.limits;
  const errPct = s.error_ratio === null ? "–" : (100 * s.error_ratio).toFixed(1) + " %";
  const section = el("section", { class: "app", "data-app": app.name, "aria-labelledby": "app-h-" + app.name });
  section.append(
    el("h2", { id: "app-h-" + app.name }, app.name),
    el("div", { class: "cols" },
      el("dl", {},
        el("dt", {}, "Hosts"), el("dd", {}, app.hosts.join(", ") || "–"),
        el("dt", {}, "Image"), el("dd", {}, el("code", {}, app.image)),
        el("dt", {}, "Slot"), el("dd", {}, app.slot),
        el("dt", {}, "Scale"), el("dd", {}, `min ${app.scale.min} · max ${app.scale.max}` + (app.scale.standby ? " · standby" : ""))),
      el("dl", {},
        el("dt", {}, "Concurrency"), el("dd", {}, `${l.max_concurrent_requests} per instance`),
        el("dt", {}, "Queue"), el("dd", {}, `${l.max_queued_requests} requests, ${fmtMs(l.queue_timeout_ms)} wait`),
        el("dt", {}, "Idle stop"), el("dd", {}, fmtMs(l.idle_timeout_ms)),
        el("dt", {}, "Startup limit"), el("dd", {}, fmtMs(l.startup_timeout_ms)))),
    el("div", { class: "stats" },
      stat("Requests", s.requests_total, "requests_total"),
      stat("Rate (10 s)", s.rate_per_s + "/s", "rate"),
      stat(`Errors 5xx (${s.window_s} s)`, errPct, "error_ratio"),
      stat(`p50 (${s.window_s} s)`, fmtMs(s.p50_ms), "p50"),
      stat(`p99 (${s.window_s} s)`, fmtMs(s.p99_ms), "p99"),
      stat("Queued", app.queued, "queued")),
    el("div", { class: "cols" },
      el("div", {}, el("h3", {}, `Requests, last ${s.series.requests.length * s.series.bin_s / 60} min`),
        seriesSvg(s.series),
        el("p", { class: "axis" }, el("span", {}, `${s.series.requests.length * s.series.bin_s / 60} min ago`),
          el("span", {}, `${s.series.bin_s} s per bar · 5xx in red · ${s.window_requests} in the last ${s.window_s} s`),
          el("span", {}, "now"))),
      el("div", {}, el("h3", {}, "Cold starts"), coldTable(s.cold_starts))),
    el("h3", {}, "Instances"),
    instancesTable(app));
  return section;
}

function render(state) {
  lastState = state;
  const focused = document.activeElement && document.activeElement.getAttribute("data-logs");
  const main = $("apps");
  const sections = state.apps.map(renderApp);
  if (!sections.length) sections.push(el("p", { class: "empty" }, "No apps deployed."));
  main.replaceChildren(...sections);
  const events = $("events").tBodies[0];
  events.replaceChildren(...state.events.map((e) => el("tr", { "data-event": e.event },
    el("td", {}, new Date(e.at_ms).toLocaleTimeString()),
    el("td", {}, e.app), el("td", {}, el("code", {}, e.instance || "–")), el("td", {}, e.event),
    el("td", {}, e.detail === null ? "" : typeof e.detail === "string" ? e.detail
      : e.detail.total_ms !== undefined ? fmtMs(e.detail.total_ms) : JSON.stringify(e.detail)))));
  if (focused) {
    const again = document.querySelector(`[data-logs="${CSS.escape(focused)}"]`);
    if (again) again.focus();
  }
}

async function showLogs(app, id) {
  const dialog = $("logs");
  $("logs-h").textContent = `Logs of ${id} (${app})`;
  $("logs-text").textContent = "loading…";
  if (!dialog.open) dialog.showModal();
  try {
    const res = await fetch(`/v1/apps/${encodeURIComponent(app)}/logs?instance=${encodeURIComponent(id)}`,
      { headers: headers(), cache: "no-store" });
    const text = await res.text();
    const lines = text.split("\n").filter(Boolean).map((l) => l.replace(/^\[[^\]]*\] /, ""));
    $("logs-text").textContent = res.ok ? (lines.slice(-100).join("\n") || "(no output yet)")
      : `${res.status}: ${res.headers.get("x-serverless-error") || text}`;
  } catch (err) {
    $("logs-text").textContent = "cannot load: " + err;
  }
}

function askToken(message) {
  const form = $("login");
  form.hidden = false;
  $("login-error").textContent = message || "";
  $("token").focus();
  setConn("signed out", "down");
}

$("login").addEventListener("submit", (ev) => {
  ev.preventDefault();
  token = $("token").value;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("token").value = "";
  $("login").hidden = true;
  connect();
});

function handleFrame(block) {
  let event = "message";
  let data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith("event: ")) event = line.slice(7);
    else if (line.startsWith("data: ")) data += line.slice(6);
  }
  if (event === "state") render(JSON.parse(data));
}

async function connect() {
  setConn("connecting…");
  let res;
  try {
    res = await fetch("/v1/events", { headers: headers(), cache: "no-store" });
  } catch (err) {
    return retry();
  }
  if (res.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    const had = token;
    token = null;
    return askToken(had ? "That token was refused." : "");
  }
  if (!res.ok || !res.body) return retry();
  setConn("live", "live");
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let end;
      while ((end = buf.indexOf("\n\n")) >= 0) {
        handleFrame(buf.slice(0, end));
        buf = buf.slice(end + 2);
      }
    }
  } catch (err) {
    // The connection dropped: reconnect below.
  }
  retry();
}

function retry() {
  setConn("disconnected, retrying…", "down");
  setTimeout(connect, 2000);
}

connect();
