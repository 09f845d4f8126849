// PipeGate inspector page: plain JavaScript, no build step. It uses the JSON API
// documented in the client's README (GET /api/requests, GET /api/requests/<id>,
// POST /api/requests/<id>/replay, GET /api/events).
"use strict";

const state = {
  requests: [],
  tunnels: [],      // every tunnel of the client process (id, public URLs, local URL)
  capture: {},
  selected: null,   // id of the exchange shown
  detail: null,     // its detail JSON
  replayed: null,   // detail of the last replay of it, shown beside it
  version: -1,
  refreshing: false,
  again: false,
};

const $ = (id) => document.getElementById(id);

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  if (props) {
    for (const [key, value] of Object.entries(props)) {
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value);
    }
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function formatTime(epoch) {
  const d = new Date(epoch * 1000);
  return d.toTimeString().slice(0, 8) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function target(x) {
  return x.path + (x.query ? "?" + x.query : "");
}

async function api(path, options) {
  const response = await fetch(path, options);
  const value = await response.json();
  if (!response.ok) throw new Error(value.error || `status ${response.status}`);
  return value;
}

// ------------------------------------------------------------------ the list

async function refresh() {
  if (state.refreshing) { state.again = true; return; }
  state.refreshing = true;
  try {
    do {
      state.again = false;
      const listing = await api("/api/requests");
      state.requests = listing.requests;
      state.tunnels = listing.tunnels;
      state.capture = listing.capture;
      state.version = listing.version;
      renderHeader();
      renderList();
      if (state.selected !== null) {
        const summary = state.requests.find((r) => r.id === state.selected);
        if (summary && state.detail && summary.version !== state.detail.version) {
          await showDetail(state.selected, false);
        }
      }
    } while (state.again);
  } catch (error) {
    $("tunnel").textContent = `inspector unreachable: ${error.message}`;
  } finally {
    state.refreshing = false;
  }
}

function tunnelOf(x) {
  return state.tunnels.find((t) => t.connection_id === x.tunnel) || null;
}

function renderHeader() {
  const shown = (t) => `${t.connection_id}: ${t.public_url || "(connecting)"} → ${t.local_url}`;
  const ts = state.tunnels;
  $("tunnel").textContent = ts.length === 1 ? `tunnel ${shown(ts[0])}`
    : ts.length === 0 ? "no tunnel running" : `${ts.length} tunnels · ${ts.map(shown).join(" · ")}`;
  // The tunnel filter: one option per tunnel, shown when there is more than one.
  const select = $("filter-tunnel");
  const ids = ts.map((t) => t.connection_id);
  const known = [...select.options].slice(1).map((o) => o.value);
  if (known.join("\n") !== ids.join("\n")) {
    const chosen = select.value;
    select.replaceChildren(el("option", { value: "" }, "all tunnels"),
      ...ids.map((id) => el("option", { value: id }, id)));
    select.value = ids.includes(chosen) ? chosen : "";
  }
  select.hidden = ids.length < 2;
  const c = state.capture;
  $("caps").textContent =
    `Keeps the last ${c.max_requests} requests; bodies are shown up to ` +
    `${formatBytes(c.body_cap)} each (${formatBytes(c.total_cap)} in all), ` +
    `longer ones are truncated.`;
}

function matches(r) {
  const tunnel = $("filter-tunnel").value;
  if (tunnel && r.tunnel !== tunnel) return false;
  const status = $("filter-status").value;
  if (status === "none" && r.status !== null) return false;
  if (status && status !== "none" && (r.status === null || String(r.status)[0] !== status)) {
    return false;
  }
  const text = $("filter-text").value.trim().toLowerCase();
  if (!text) return true;
  const haystack = `${r.tunnel} ${r.method} ${target(r)} ${r.status ?? ""} ${r.outcome}`.toLowerCase();
  return text.split(/\s+/).every((word) => haystack.includes(word));
}

function renderList() {
  const body = document.querySelector("#requests tbody");
  const rows = [];
  for (const r of state.requests) {
    if (!matches(r)) continue;
    const status = r.status === null ? (r.finished ? "—" : "…") : r.status;
    const duration = r.duration_ms === null ? "…" : `${r.duration_ms.toFixed(1)} ms`;
    const row = el(
      "tr",
      { dataset: { id: r.id }, class: r.id === state.selected ? "selected" : "" },
      el("td", null, formatTime(r.started)),
      el("td", { class: "tunnel" }, r.tunnel),
      el("td", { class: "method" }, r.method, r.kind === "websocket" ? " (ws)" : ""),
      el("td", { class: "path", title: target(r) }, target(r),
        r.replay_of !== null ? el("span", { class: "replay-tag" }, ` replay of #${r.replay_of}`) : null),
      el("td", { class: `status s${String(r.status ?? "")[0] || ""}` }, status),
      el("td", null, duration),
      el("td", null, `${formatBytes(r.request_bytes)} / ${formatBytes(r.response_bytes)}`),
    );
    row.addEventListener("click", () => select(r.id));
    rows.push(row);
  }
  body.replaceChildren(...rows);
  $("empty").hidden = state.requests.length > 0;
}

// ------------------------------------------------------------------ detail

async function select(id) {
  state.selected = id;
  state.replayed = null;
  $("replayed").hidden = true;
  $("edit-form").hidden = true;
  $("curl-text").hidden = true;
  $("action-status").textContent = "";
  renderList();
  await showDetail(id, true);
}

async function showDetail(id, fillEdit) {
  try {
    state.detail = await api(`/api/requests/${id}`);
  } catch (error) {
    $("action-status").textContent = error.message;
    return;
  }
  $("detail-pane").hidden = false;
  renderExchange($("original"), state.detail, "Original");
  const http = state.detail.kind === "http";
  $("replay").disabled = !http;
  $("edit-toggle").disabled = !http;
  if (fillEdit) fillEditForm(state.detail);
}

function decode(b64) {
  const raw = atob(b64);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  return bytes;
}

function header(headers, name) {
  const found = headers.find(([n]) => n.toLowerCase() === name);
  return found ? found[1] : "";
}

function hexDump(bytes) {
  const lines = [];
  for (let offset = 0; offset < bytes.length; offset += 16) {
    const slice = bytes.subarray(offset, offset + 16);
    const hex = Array.from(slice, (b) => b.toString(16).padStart(2, "0")).join(" ");
    const text = Array.from(slice, (b) => (b >= 32 && b < 127 ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${offset.toString(16).padStart(8, "0")}  ${hex.padEnd(47)}  ${text}`);
  }
  return lines.join("\n");
}

function asText(bytes) {
  try {
    const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    // Control characters other than tab and line ends mean binary.
    return /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/.test(text) ? null : text;
  } catch {
    return null;
  }
}

// A body as text, pretty JSON, an image or a hex dump; a note says when it is cut.
function renderBody(body, headers) {
  const box = el("div", { class: "body" });
  if (body.size === 0) {
    box.append(el("p", { class: "note" }, "no body"));
    return box;
  }
  const bytes = decode(body.base64);
  const type = header(headers, "content-type").split(";")[0].trim().toLowerCase();
  const encoded = header(headers, "content-encoding");
  let kind = "hex";
  let shown;
  if (!encoded && type.startsWith("image/") && !body.truncated) {
    kind = "image";
    shown = el("img", { class: "body-image", alt: "image body", src: `data:${type};base64,${body.base64}` });
  } else {
    const text = encoded ? null : asText(bytes);
    if (text !== null) {
      kind = "text";
      let pretty = text;
      if (type.includes("json") || /^\s*[[{]/.test(text)) {
        try {
          pretty = JSON.stringify(JSON.parse(text), null, 2);
          kind = "json";
        } catch {
          // not JSON after all (or cut short): shown as text
        }
      }
      shown = el("pre", { class: `body-${kind}` }, pretty);
    } else {
      shown = el("pre", { class: "hex body-hex" }, hexDump(bytes));
    }
  }
  box.dataset.kind = kind;
  box.append(el("p", { class: "note" }, `${formatBytes(body.size)}, shown as ${kind}`));
  if (body.truncated) {
    box.append(el("p", { class: "note truncated" },
      `truncated: showing the first ${body.captured.toLocaleString("en")} of ` +
      `${body.size.toLocaleString("en")} bytes (the inspector keeps ` +
      `${formatBytes(state.capture.body_cap)} of each body)`));
  }
  box.append(shown);
  return box;
}

function renderHeads(headers) {
  if (headers.length === 0) return el("p", { class: "note" }, "no headers");
  return el("table", { class: "heads" },
    ...headers.map(([name, value]) => el("tr", null, el("td", { class: "name" }, name), el("td", null, value))));
}

function renderExchange(box, x, title) {
  const t = x.timings;
  const ms = (v) => (v === null ? "—" : `${v.toFixed(1)} ms`);
  const children = [
    el("h2", null, `${title} #${x.id}`, x.replay_of !== null ? ` (replay of #${x.replay_of})` : ""),
    el("p", { class: "summary" }, `[${x.tunnel}] ${x.method} ${target(x)} → `,
      el("strong", { class: "status" }, x.status ?? (x.finished ? "no response" : "…")),
      x.outcome ? ` (${x.outcome})` : ""),
    el("p", { class: "note timings" },
      `head in ${formatTime(t.head_in)} · response head ${ms(t.response_head_ms)} · ` +
      `first byte ${ms(t.first_byte_ms)} · end ${ms(t.end_ms)}`),
    el("h3", null, "Request headers"), renderHeads(x.request.headers),
    el("h3", null, "Request body"), renderBody(x.request.body, x.request.headers),
    el("h3", null, "Response headers"), renderHeads(x.response.headers),
  ];
  if (x.websocket) {
    children.push(el("h3", null, "WebSocket messages"));
    if (x.websocket.dropped) {
      children.push(el("p", { class: "note" }, `${x.websocket.dropped} earlier messages not kept`));
    }
    const list = el("ol", { class: "ws-messages" });
    for (const m of x.websocket.messages) {
      const arrow = m.direction === "in" ? "→ to app" : "← from app";
      const item = el("li", { class: `ws-${m.direction}` },
        el("span", { class: "note" }, `${arrow} at ${m.at_ms.toFixed(1)} ms, ${m.text ? "text" : "binary"}`));
      item.append(renderBody(m.body, m.text ? [["content-type", "text/plain"]] : []));
      list.append(item);
    }
    children.push(list);
    for (const c of x.websocket.closes) {
      children.push(el("p", { class: "note ws-close" },
        `close ${c.direction === "in" ? "from caller" : "from app"}: ${c.code} ${c.reason}`));
    }
  } else {
    children.push(el("h3", null, "Response body"), renderBody(x.response.body, x.response.headers));
  }
  box.replaceChildren(...children);
}

// ------------------------------------------------------------------ actions

function fillEditForm(x) {
  $("edit-method").value = x.method;
  $("edit-path").value = target(x);
  $("edit-headers").value = x.request.headers.map(([n, v]) => `${n}: ${v}`).join("\n");
  const text = x.request.body.size ? asText(decode(x.request.body.base64)) : "";
  $("edit-body").value = text ?? "";
}

async function doReplay(edits) {
  const id = state.selected;
  $("action-status").textContent = "replaying…";
  try {
    const options = { method: "POST" };
    if (edits) {
      options.headers = { "content-type": "application/json" };
      options.body = JSON.stringify(edits);
    }
    const result = await api(`/api/requests/${id}/replay`, options);
    state.replayed = result.replay;
    renderExchange($("replayed"), result.replay, "Replay");
    $("replayed").hidden = false;
    $("action-status").textContent = `replayed as #${result.replay.id}: ${result.replay.status}`;
  } catch (error) {
    $("action-status").textContent = `replay failed: ${error.message}`;
  }
  refresh();
}

function editedRequest() {
  const headers = [];
  for (const line of $("edit-headers").value.split("\n")) {
    if (!line.trim()) continue;
    const at = line.indexOf(":");
    if (at <= 0) throw new Error(`not a header line: ${line}`);
    headers.push([line.slice(0, at).trim(), line.slice(at + 1).trim()]);
  }
  const edits = { method: $("edit-method").value.trim(), path: $("edit-path").value.trim(), headers };
  const original = state.detail.request.body;
  const text = $("edit-body").value;
  // An unchanged binary or truncated body is sent as it was kept; anything typed, as text.
  if (text || original.size === 0 || asText(decode(original.base64)) !== null) edits.body = text;
  return edits;
}

function shellQuote(value) {
  return "'" + value.replace(/'/g, "'\\''") + "'";
}

function curlCommand(x) {
  const tunnel = tunnelOf(x);
  const base = ((tunnel && tunnel.public_url) || "http://localhost").replace(/\/$/, "");
  const parts = ["curl"];
  if (x.method !== "GET") parts.push("-X", shellQuote(x.method));
  parts.push(shellQuote(base + target(x)));
  const skip = new Set(["host", "content-length", "connection", "transfer-encoding"]);
  for (const [name, value] of x.request.headers) {
    if (skip.has(name.toLowerCase()) || name.toLowerCase().startsWith("x-forwarded-")) continue;
    parts.push("-H", shellQuote(`${name}: ${value}`));
  }
  const body = x.request.body;
  if (body.size) {
    const text = asText(decode(body.base64));
    if (text !== null && !body.truncated) parts.push("--data-binary", shellQuote(text));
    else parts.push("--data-binary", "@body.bin");
  }
  return parts.join(" ");
}

async function copyCurl() {
  const command = curlCommand(state.detail);
  $("curl-text").textContent = command;
  $("curl-text").hidden = false;
  try {
    await navigator.clipboard.writeText(command);
    $("action-status").textContent = "curl command copied";
  } catch {
    $("action-status").textContent = "curl command shown below (clipboard not available)";
  }
}

// ------------------------------------------------------------------ live updates

function listen() {
  if (!window.EventSource) {
    setInterval(refresh, 1000);
    return;
  }
  const source = new EventSource("/api/events");
  source.addEventListener("changed", (event) => {
    $("live").classList.remove("off");
    if (JSON.parse(event.data).version !== state.version) refresh();
  });
  source.addEventListener("error", () => {
    $("live").classList.add("off");
    if (source.readyState === EventSource.CLOSED) setInterval(refresh, 2000); // refused: poll
  });
}

function start() {
  $("filter-text").addEventListener("input", renderList);
  $("filter-status").addEventListener("change", renderList);
  $("filter-tunnel").addEventListener("change", renderList);
  $("replay").addEventListener("click", () => doReplay(null));
  $("edit-toggle").addEventListener("click", () => {
    $("edit-form").hidden = !$("edit-form").hidden;
  });
  $("copy-curl").addEventListener("click", copyCurl);
  $("edit-form").addEventListener("submit", (event) => {
    event.preventDefault();
    let edits;
    try {
      edits = editedRequest();
    } catch (error) {
      $("action-status").textContent = error.message;
      return;
    }
    doReplay(edits);
  });
  refresh();
  listen();
}

start();
