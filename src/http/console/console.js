// The operator console (specs/console.md). Polls GET /admin/console every REFRESH_MS with the
// admin key from sessionStorage; searches and retries messages through the public API.
// Everything the server sends is shown with textContent or as attribute values, never parsed
// as HTML: provider answers and message fields are hostile input.
"use strict";

const REFRESH_MS = 2000;
const PAGE_SIZE = 25;
const KEY_ITEM = "switchboard.console.key";
const SVG = "http://www.w3.org/2000/svg";
const OUTCOMES = ["success", "error", "timeout", "rate_limited", "rejected", "misconfigured"];

const state = { offset: 0, filter: "", providerState: "", timer: null, inFlight: false, shown: null };

const $ = (id) => document.getElementById(id);

/** An element with attributes (never `on…`, `href` or `src` from data) and text or nodes. */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value !== null && value !== undefined) node.setAttribute(name, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  return node;
}

function badge(value, label) {
  return el("span", { class: "badge " + String(value).replace(/[^a-z_]/g, "") }, label || value);
}

function cell(label, ...children) {
  return el("td", { "data-label": label }, ...children);
}

function key() {
  return sessionStorage.getItem(KEY_ITEM);
}

/** A request with the admin key; 401/403 bring the key prompt back. */
async function api(path, options) {
  const headers = Object.assign({ Accept: "application/json" }, (options && options.headers) || {});
  const stored = key();
  if (stored) headers.Authorization = "Bearer " + stored;
  const response = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
  if (response.status === 401 || response.status === 403) {
    const why = response.status === 401
      ? "The key was not accepted (401). Enter an admin API key."
      : "That key is not an admin key (403). Enter an admin API key.";
    askForKey(why);
    throw new KeyRefused();
  }
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  return { status: response.status, body };
}

class KeyRefused extends Error {}

function errorText(answer) {
  const error = answer.body && answer.body.error;
  return error ? `${answer.status} ${error.code}: ${error.message}` : `HTTP ${answer.status}`;
}

function showAlert(text) {
  const alert = $("alert");
  alert.textContent = text || "";
  alert.hidden = !text;
}

// --- the key -------------------------------------------------------------------------------

function askForKey(reason) {
  stopPolling();
  sessionStorage.removeItem(KEY_ITEM);
  $("app").hidden = true;
  $("change-key").hidden = true;
  $("login").hidden = false;
  $("login-reason").textContent = reason || "";
  $("live").textContent = "Not connected";
  $("key").value = "";
  $("key").focus();
}

function start() {
  $("login").hidden = true;
  $("app").hidden = false;
  $("change-key").hidden = !key();
  refresh();
}

// --- the snapshot ------------------------------------------------------------------------------

function stopPolling() {
  clearTimeout(state.timer);
  state.timer = null;
}

function schedule() {
  stopPolling();
  state.timer = setTimeout(refresh, REFRESH_MS);
}

async function refresh() {
  if (state.inFlight) return;
  state.inFlight = true;
  const query = new URLSearchParams({ offset: String(state.offset), limit: String(PAGE_SIZE) });
  if (state.filter) query.set("filter", state.filter);
  if (state.providerState) query.set("state", state.providerState);
  try {
    const answer = await api("/admin/console?" + query.toString());
    if (answer.status !== 200 || !answer.body) {
      showAlert("Could not read /admin/console: " + errorText(answer));
    } else {
      showAlert("");
      render(answer.body);
      $("live").textContent = `Updated ${new Date().toLocaleTimeString()} · refreshes every ${REFRESH_MS / 1000} s`;
    }
    schedule();
  } catch (error) {
    if (!(error instanceof KeyRefused)) {
      showAlert("The service does not answer: " + error.message);
      schedule();
    }
  } finally {
    state.inFlight = false;
  }
}

function render(snapshot) {
  renderConfig(snapshot);
  renderProviders(snapshot);
  renderRoutes(snapshot);
}

function renderConfig(snapshot) {
  $("config-version").textContent = snapshot.version;
  $("config-loaded-at").textContent = snapshot.loaded_at;
  $("config-loaded-by").textContent = snapshot.loaded_by;
  $("config-path").textContent = snapshot.path;
  const rejected = snapshot.last_rejected;
  $("rejected").hidden = !rejected;
  $("no-rejection").hidden = !!rejected;
  if (!rejected) return;
  const version = rejected.version ? ` (version ${rejected.version})` : "";
  $("rejected-summary").textContent =
    `${rejected.at}: ${rejected.path}${version} was refused; ${rejected.active_version} keeps serving.` +
    (rejected.error ? " " + rejected.error : "");
  $("diagnostics").replaceChildren(...(rejected.diagnostics || []).map((d) => {
    const where = d.line === null || d.line === undefined
      ? (d.env ? `${d.file} (${d.env})` : d.file)
      : `${d.file}:${d.line}:${d.column}`;
    return el("li", { class: "diagnostic" },
      el("code", { class: "where" }, where), " ",
      badge(d.severity), " ",
      el("code", {}, d.code), " ", d.message,
      d.help ? el("span", { class: "sub" }, "help: " + d.help) : null);
  }));
}

function last(values) {
  for (let i = values.length - 1; i >= 0; i--) if (values[i] !== null && values[i] !== undefined) return values[i];
  return null;
}

function duration(ms) {
  const seconds = Math.ceil(ms / 1000);
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes} min ${seconds % 60} s`;
}

/** A sparkline of `values` (nulls leave gaps), scaled to [0, max]. */
function sparkline(values, max, label, extraClass) {
  const width = 120, height = 24, n = Math.max(values.length, 2);
  const top = Math.max(max || 0, ...values.filter((v) => v !== null)) || 1;
  const chart = svg("svg", {
    class: "spark" + (extraClass ? " " + extraClass : ""), viewBox: `0 0 ${width} ${height}`,
    role: "img", "aria-label": label,
  });
  chart.append(svg("line", { class: "base", x1: 0, y1: height - 1, x2: width, y2: height - 1 }));
  let points = [];
  const flush = () => {
    if (points.length === 1) {
      chart.append(svg("circle", { cx: points[0][0], cy: points[0][1], r: 1.5 }));
    } else if (points.length) {
      chart.append(svg("polyline", { points: points.map((p) => p.join(",")).join(" ") }));
    }
    points = [];
  };
  values.forEach((value, i) => {
    if (value === null || value === undefined) return flush();
    const x = (i * width) / (n - 1);
    const y = height - 2 - (value / top) * (height - 4);
    points.push([x.toFixed(1), y.toFixed(1)]);
  });
  flush();
  return chart;
}

/** The window's outcomes as a stacked bar and a list. */
function outcomes(counts) {
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  const wrap = el("div", {});
  if (!total) {
    wrap.append(el("span", { class: "sub" }, "no attempts"));
    return wrap;
  }
  const bar = svg("svg", { class: "bars", viewBox: "0 0 120 8", role: "img", "aria-label": "outcomes" });
  let x = 0;
  const list = el("ul", { class: "outcomes" });
  for (const outcome of OUTCOMES) {
    const count = counts[outcome] || 0;
    if (!count) continue;
    const width = (count / total) * 120;
    bar.append(svg("rect", { class: outcome, x: x.toFixed(2), y: 0, width: width.toFixed(2), height: 8 }));
    x += width;
    list.append(el("li", {}, `${outcome} ${count}`));
  }
  wrap.append(list, bar);
  return wrap;
}

function renderProviders(snapshot) {
  $("window-min").textContent = String(snapshot.window_s / 60);
  $("sample-s").textContent = String(snapshot.sample_every_s);
  const t = snapshot.totals;
  $("provider-totals").textContent =
    `${t.providers} providers: ${t.closed} closed, ${t.half_open} half-open, ${t.open} open; ${t.paused} paused by a 429.`;
  const rows = snapshot.providers.map((p) => {
    const r = p.recent;
    const breaker = [badge(p.breaker, p.breaker.replace("_", "-"))];
    if (p.retry_in_ms !== null) breaker.push(el("span", { class: "sub retry" }, `retry in ${duration(p.retry_in_ms)}`));
    if (p.paused) breaker.push(" ", badge("paused"), el("span", { class: "sub" }, `for ${duration(p.paused_for_ms || 0)}`));
    const rate = last(r.attempts_per_s);
    const success = last(r.success_pct);
    const p50 = last(r.p50_ms), p99 = last(r.p99_ms);
    return el("tr", { "data-provider": p.name },
      cell("Provider", el("strong", {}, p.name)),
      cell("Kind", p.kind),
      cell("Channels", p.channels.join(", ")),
      cell("Breaker", el("div", {}, ...breaker)),
      cell("Attempts/s", el("div", {}, rate === null ? "–" : String(rate),
        sparkline(r.attempts_per_s, 0, `attempts per second, ${r.attempts_per_s.length} samples`))),
      cell("Success", el("div", {}, success === null ? "–" : `${success} %`,
        sparkline(r.success_pct, 100, "success percentage"))),
      cell("Latency p50 / p99", el("div", {}, p50 === null ? "–" : `${p50} / ${p99} ms`,
        sparkline(r.p50_ms, 0, "p50 latency in ms"), sparkline(r.p99_ms, 0, "p99 latency in ms", "p99"))),
      cell("Outcomes", outcomes(r.outcomes)));
  });
  $("providers").querySelector("tbody").replaceChildren(...rows);
  const from = snapshot.matching ? state.offset + 1 : 0;
  const to = state.offset + snapshot.providers.length;
  $("page-info").textContent = `${from}–${to} of ${snapshot.matching}`;
  $("prev").disabled = state.offset === 0;
  $("next").disabled = to >= snapshot.matching;
}

function renderRoutes(snapshot) {
  $("queue-depth").textContent = String(snapshot.queue_depth);
  $("queue-spark").replaceChildren(sparkline(snapshot.queue_depth_recent, 0, "queue depth, last five minutes"));
  const rows = snapshot.routes.map((route) => {
    const members = el("ol", { class: "outcomes" },
      ...route.providers.map((name, i) => el("li", {}, route.weights.length ? `${name} (${route.weights[i]})` : name)));
    return el("tr", { "data-channel": route.channel },
      cell("Channel", el("strong", {}, route.channel)),
      cell("Strategy", route.strategy),
      cell("Providers", members),
      cell("Max attempts", String(route.max_attempts)),
      cell("Rules", String(route.rules.length)));
  });
  $("routes").querySelector("tbody").replaceChildren(...rows);
}

// --- messages ----------------------------------------------------------------------------------

async function search(event) {
  event.preventDefault();
  const id = $("m-id").value.trim();
  const status = $("search-status");
  $("message").hidden = true;
  try {
    if (id) {
      const answer = await api("/v1/messages/" + encodeURIComponent(id));
      if (answer.status === 200) {
        listResults([answer.body]);
        showMessage(answer.body);
      } else {
        listResults([]);
        // An admin key reads every key's messages by id (specs/security.md).
        status.textContent = answer.status === 404 ? `No message ${id}.` : errorText(answer);
      }
      return;
    }
    const query = new URLSearchParams();
    if ($("m-to").value.trim()) query.set("to", $("m-to").value.trim());
    if ($("m-status").value) query.set("status", $("m-status").value);
    // A page may be short, even empty, with a next_cursor (specs/http-api.md): follow it until
    // 20 are found or it is null, for a few pages at most.
    const found = [];
    for (let pages = 0; pages < 10 && found.length < 20; pages++) {
      query.set("limit", String(20 - found.length));
      const answer = await api("/v1/messages?" + query.toString());
      if (answer.status !== 200) {
        listResults([]);
        status.textContent = errorText(answer);
        return;
      }
      found.push(...answer.body.messages);
      if (answer.body.next_cursor === null) break;
      query.set("cursor", answer.body.next_cursor);
    }
    listResults(found);
  } catch (error) {
    if (!(error instanceof KeyRefused)) status.textContent = "The service does not answer: " + error.message;
  }
}

function listResults(messages) {
  $("search-status").textContent = messages.length === 1 ? "1 message." : `${messages.length} messages (newest first, at most 20).`;
  const rows = messages.map((m) => el("tr", { "data-message": m.id },
    cell("Message", (() => {
      const open = el("button", { type: "button", class: "link mono" }, m.id);
      open.addEventListener("click", () => showMessage(m));
      return open;
    })()),
    cell("Channel", m.channel),
    cell("To", m.to),
    cell("Status", badge(m.status)),
    cell("Provider", m.provider || "–"),
    cell("Created", m.created_at)));
  $("results").querySelector("tbody").replaceChildren(...rows);
  $("results").hidden = messages.length === 0;
}

function fact(name, value) {
  return el("div", {}, el("dt", {}, name), el("dd", {}, value));
}

function showMessage(m) {
  state.shown = m.id;
  $("message-id").textContent = m.id;
  const facts = [
    fact("Status", badge(m.status)),
    fact("Channel", m.channel),
    fact("From", m.from),
    fact("To", m.to),
    fact("Provider", m.provider || "–"),
    fact("Provider message id", m.provider_message_id || "–"),
    fact("Delivery status", m.delivery_status || "–"),
    fact("Created", m.created_at),
  ];
  if (m.error) facts.push(fact("Error", `${m.error.code}: ${m.error.message}`));
  $("message-facts").replaceChildren(...facts);
  // Oldest first: an attempt by when it started (its time is when it ended); at the same moment
  // the start of the message's life, then attempts, then what followed from them.
  const opening = ["queued", "received", "sending"];
  const entries = [
    ...m.events.map((e) => ({ at: Date.parse(e.time), rank: opening.includes(e.type) ? 0 : 2, event: e })),
    ...m.attempts.map((a) => ({ at: Date.parse(a.time) - a.latency_ms, rank: 1, attempt: a })),
  ].sort((a, b) => a.at - b.at || a.rank - b.rank);
  $("timeline").replaceChildren(...entries.map((entry) => {
    if (entry.attempt) {
      const a = entry.attempt;
      const error = [a.error_class, a.error_code, a.error_message].filter((x) => x).join(" · ");
      return el("li", { class: "attempt" },
        el("time", { datetime: a.time }, a.time),
        "Attempt via ", el("strong", {}, a.provider), " ", badge(a.outcome), ` ${a.latency_ms} ms`,
        error ? el("span", { class: "detail" }, error) : null);
    }
    const e = entry.event;
    const detail = e.detail === null || e.detail === undefined ? "" : JSON.stringify(e.detail);
    return el("li", { class: "event" },
      el("time", { datetime: e.time }, e.time),
      `${e.source}: `, badge(e.type), e.provider ? ` ${e.provider}` : "",
      detail ? el("span", { class: "detail mono" }, detail) : null);
  }));
  $("retry").hidden = m.status !== "failed";
  $("retry").disabled = false;
  $("retry-status").textContent = "";
  $("message").hidden = false;
}

async function retry() {
  const id = state.shown;
  if (!id) return;
  $("retry").disabled = true;
  try {
    const answer = await api(`/v1/messages/${encodeURIComponent(id)}/retry`, { method: "POST" });
    if (answer.status === 202) {
      $("retry-status").textContent = "Retry accepted: the message is queued again.";
      const again = await api("/v1/messages/" + encodeURIComponent(id));
      if (again.status === 200) {
        showMessage(again.body);
        $("retry-status").textContent = "Retry accepted: the message is queued again.";
      }
    } else {
      $("retry-status").textContent = "Retry refused: " + errorText(answer);
      $("retry").disabled = false;
    }
  } catch (error) {
    if (!(error instanceof KeyRefused)) $("retry-status").textContent = "The service does not answer: " + error.message;
  }
}

// --- wiring ------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("key").value.trim();
    if (!value) return;
    sessionStorage.setItem(KEY_ITEM, value);
    start();
  });
  $("change-key").addEventListener("click", () => askForKey("Enter another admin API key."));
  let typing = null;
  $("filter").addEventListener("input", () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      state.filter = $("filter").value.trim();
      state.offset = 0;
      refresh();
    }, 250);
  });
  $("provider-filter").addEventListener("submit", (event) => event.preventDefault());
  $("state").addEventListener("change", () => {
    state.providerState = $("state").value;
    state.offset = 0;
    refresh();
  });
  $("prev").addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - PAGE_SIZE);
    refresh();
  });
  $("next").addEventListener("click", () => {
    state.offset += PAGE_SIZE;
    refresh();
  });
  $("search").addEventListener("submit", search);
  $("retry").addEventListener("click", retry);
  // Without a stored key the first read tells whether one is needed (none with keys off).
  start();
});
