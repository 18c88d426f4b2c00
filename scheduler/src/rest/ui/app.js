// localml's web page: cluster state (live), try a model (random values, a .npy or JSON
// file, a photo), operate (cordon, deployments, model upload). Talks to the REST listener
// it came from: /api/v1/ (admin) and the Open Inference Protocol under /v2. The API key
// stays in this tab's sessionStorage and goes in the Authorization header only, never in
// a URL; live updates use server-sent events opened with a short-lived ticket.

import { fromNpy } from "./npy.js";
import { imageTensor } from "./image.js";

const $ = (id) => document.getElementById(id);
const KEY = "localml.key";
// Each start of live updates gets a new generation; an older one's callbacks do nothing.
let generation = 0;
let timer = null;
let events = null;
let trying = null;
// Workers being drained from this page: cordoned, watched until nothing runs there.
const draining = new Set();
// Each worker's answered requests at the last update, for its rate.
const answered = new Map();

const CLUSTER_ROUTES = ["/api/v1/workers", "/api/v1/models", "/api/v1/events/ticket"];

function headers(extra = {}) {
  const key = sessionStorage.getItem(KEY);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function api(method, path, body) {
  const init = { method, headers: headers(body ? { "Content-Type": "application/json" } : {}) };
  if (body) init.body = JSON.stringify(body);
  const response = await fetch(path, init);
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  if (response.status === 401) { showSignIn(json?.error || "sign in"); throw new Error("unauthorized"); }
  // A key that may not see the cluster: stop asking (other refusals, e.g. jobs for a key
  // without the jobs scope, are that call's error only).
  if (response.status === 403 && CLUSTER_ROUTES.includes(path)) {
    stopLive();
    throw new Error(`this key may not see the cluster (it needs the admin scope): ${json?.error || ""}`);
  }
  if (!response.ok) throw new Error(json?.error || `${response.status} ${response.statusText}`);
  return json;
}

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const c of children) node.append(c);
  return node;
}

function bytes(n) {
  if (n >= 2 ** 30) return `${(n / 2 ** 30).toFixed(1)} GiB`;
  if (n >= 2 ** 20) return `${Math.round(n / 2 ** 20)} MiB`;
  return `${(n / 1024).toFixed(1)} KiB`;
}

function power(p) {
  if (p.source === "battery" || p.source === "ups") {
    const pct = p.battery_percent == null ? "" : ` ${Math.round(p.battery_percent)}%`;
    const mins = p.runtime_seconds == null ? "" : `, ${Math.round(p.runtime_seconds / 60)} min`;
    return el("span", { className: "battery", textContent: `${p.source === "ups" ? "UPS" : "Battery"}${pct}${mins}` });
  }
  return p.source === "mains" ? "Mains" : "Unknown";
}

function memoryBar(total, free, label = "") {
  const used = total ? (total - free) / total : 0;
  const bar = el("span", { className: "bar", title: `${bytes(total - free)} of ${bytes(total)} used` });
  const fill = el("span");
  fill.style.width = `${Math.round(used * 100)}%`;
  bar.append(fill);
  return el("span", { className: "memory" }, label, bar, ` ${bytes(free)} free`);
}

// One bar per GPU ("-" on a PC without one).
function gpuBars(gpus) {
  if (!gpus.length) return "-";
  return el("span", {}, ...gpus.map((g, i) => memoryBar(g.memory_total_bytes, g.memory_free_bytes, gpus.length > 1 ? `${i} ` : "")));
}

function stopLive() {
  generation++;
  clearTimeout(timer);
  events?.close();
  events = null;
}

// The tables are rebuilt on each update; the focused control is found again by its row's
// key and label, so keyboard users keep their place (and a field being edited is kept).
function keepFocus(table, key, render) {
  const active = document.activeElement;
  const row = active && table.contains(active) ? active.closest("tr") : null;
  if (row && active.tagName === "INPUT") return; // someone is typing: update later
  const remembered = row ? [row.dataset[key], active.textContent] : null;
  render();
  if (!remembered) return;
  for (const r of table.tBodies[0].rows) {
    if (r.dataset[key] !== remembered[0]) continue;
    const again = [...r.querySelectorAll("button")].find((b) => b.textContent === remembered[1])
      || r.querySelector("button");
    again?.focus();
  }
}

function showSignIn(message) {
  stopLive();
  for (const id of ["cluster", "try", "signout", "open-models", "operate"]) $(id).hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = sessionStorage.getItem(KEY) ? message : "";
  $("key").focus();
}

// Requests a worker answered per second since the previous update (its models' counts).
function workerRate(w) {
  const count = w.models.reduce((s, m) => s + m.inferences, 0);
  const now = performance.now();
  const before = answered.get(w.name);
  answered.set(w.name, { count, at: now });
  if (!before || now - before.at < 500 || count < before.count) return before?.shown ?? "-";
  const shown = `${((count - before.count) / ((now - before.at) / 1000)).toFixed(1)}/s`;
  answered.get(w.name).shown = shown;
  return shown;
}

function renderWorkers(workers) {
  keepFocus($("workers"), "worker", () => $("workers").tBodies[0].replaceChildren(...workers.map((w) => {
    const action = el("button", {
      type: "button",
      textContent: w.cordoned ? "Uncordon" : "Cordon",
      onclick: () => cordon(w.name, !w.cordoned),
    });
    action.setAttribute("aria-label", `${w.cordoned ? "Uncordon" : "Cordon"} ${w.name}`);
    const actions = [action];
    if (!w.cordoned) {
      const drain = el("button", { type: "button", textContent: "Drain", onclick: () => drainWorker(w.name) });
      drain.setAttribute("aria-label", `Drain ${w.name}: cordon it and wait for its requests to finish`);
      actions.push(" ", drain);
    }
    // As kubectl localml drain: cordoned, then drained once nothing runs or waits there.
    // Sent there and not answered (the scheduler's count, or the worker's if larger), and
    // waiting in its queues.
    const busy = Math.max(w.in_flight, w.models.reduce((s, m) => s + m.in_flight, 0)) + w.queue;
    const drainState = !draining.has(w.name) ? "" : busy ? `, draining: ${busy} running` : ", drained";
    const state = w.state + (w.cordoned ? ", cordoned" : "") + (w.draining ? ", draining" : "") + drainState;
    const row = el("tr", {},
      el("td", { textContent: w.name }),
      el("td", { className: `state-${w.state}`, textContent: state, title: [w.reason, ...w.conditions].filter(Boolean).join("; ") }),
      el("td", {}, power(w.power)),
      el("td", { className: "wide" }, memoryBar(w.ram_total_bytes, w.ram_free_bytes)),
      el("td", { className: "wide gpu" }, gpuBars(w.gpus)),
      el("td", { className: "wide", textContent: w.queue }),
      el("td", { className: "wide", textContent: w.in_flight }),
      el("td", { className: "wide rate", textContent: workerRate(w) }),
      el("td", { className: "wide", textContent: w.models.length }),
      el("td", {}, ...actions));
    row.dataset.worker = w.name;
    return row;
  })));
}

// A latency in milliseconds, as the tables show it ("-" before the first request).
function millis(ms) {
  if (ms === null || ms === undefined) return "-";
  return ms < 10 ? `${ms.toFixed(2)} ms` : `${Math.round(ms)} ms`;
}

// A small chart of the last minutes: requests per second (bars) and p50 latency (line),
// window by window; its title says the numbers for those who would rather read.
function chart(history) {
  const ns = "http://www.w3.org/2000/svg";
  const w = 120, h = 28;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("class", "chart");
  svg.setAttribute("role", "img");
  const rates = history.map((p) => p.rate_per_s || 0);
  const p50s = history.map((p) => p.p50_ms);
  const maxRate = Math.max(...rates, 1e-9);
  const maxP50 = Math.max(...p50s.filter((v) => v != null), 1e-9);
  const step = w / Math.max(history.length, 1);
  rates.forEach((r, i) => {
    const bar = document.createElementNS(ns, "rect");
    const bh = (r / maxRate) * (h - 2);
    bar.setAttribute("x", (i * step).toFixed(1));
    bar.setAttribute("y", (h - bh).toFixed(1));
    bar.setAttribute("width", Math.max(step - 1, 1).toFixed(1));
    bar.setAttribute("height", bh.toFixed(1));
    svg.append(bar);
  });
  const points = p50s.map((v, i) => (v == null ? null : `${(i * step + step / 2).toFixed(1)},${(h - 1 - (v / maxP50) * (h - 4)).toFixed(1)}`)).filter(Boolean);
  if (points.length > 1) {
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points.join(" "));
    svg.append(line);
  }
  const last = history.at(-1);
  const minutes = Math.round(history.reduce((s, p) => s + p.seconds, 0) / 60);
  const label = `last ${minutes || "<1"} min: up to ${maxRate.toFixed(1)} requests/s; p50 up to ${millis(p50s.some((v) => v != null) ? maxP50 : null)}; now ${(last?.rate_per_s || 0).toFixed(1)}/s`;
  svg.setAttribute("aria-label", label);
  const title = document.createElementNS(ns, "title");
  title.textContent = label;
  svg.prepend(title);
  return svg;
}

function renderModels(models) {
  keepFocus($("models"), "model", () => $("models").tBodies[0].replaceChildren(...models.map((m) => {
    const button = el("button", { type: "button", textContent: "Try", onclick: () => openTry(m) });
    button.setAttribute("aria-label", `Try ${m.name} version ${m.version}`);
    const recent = m.recent || {};
    const row = el("tr", {},
      el("td", { textContent: m.name }),
      el("td", { textContent: m.version }),
      el("td", { className: "wide", textContent: m.ready_workers.join(", ") || "nowhere" }),
      el("td", { className: "wide", textContent: m.version_stats?.requests_ok ?? m.requests_ok }),
      el("td", { className: "wide", textContent: m.version_stats?.requests_failed ?? m.requests_failed }),
      el("td", { className: "wide rate", textContent: recent.rate_per_s == null ? "-" : `${recent.rate_per_s.toFixed(1)}/s` }),
      el("td", { className: "wide latency", textContent: millis(recent.p50_ms) }),
      el("td", { className: "wide latency", textContent: millis(recent.p99_ms) }),
      el("td", { className: "wide" }, chart(m.history || [])),
      el("td", {}, button));
    row.dataset.model = `${m.name}:${m.version}`;
    return row;
  })));
}

function renderDeployments(deployments) {
  $("deployments-section").hidden = deployments === null;
  if (!deployments) return;
  keepFocus($("deployments"), "deployment", () => $("deployments").tBodies[0].replaceChildren(...deployments.map((d) => {
    const replicas = el("input", { type: "number", min: 0, max: 1000, value: d.replicas, className: "replicas" });
    replicas.setAttribute("aria-label", `Replicas of ${d.name}`);
    const version = el("input", { value: d.version, size: 4, className: "version", placeholder: "newest" });
    version.setAttribute("aria-label", `Version of ${d.name}`);
    // Only what was changed here is sent (a change made elsewhere meanwhile stays).
    const apply = el("button", {
      type: "button", textContent: "Apply",
      onclick: () => {
        const change = {};
        if (replicas.value !== String(d.replicas)) change.replicas = replicas.value;
        if (version.value.trim() !== d.version) change.version = version.value.trim();
        changeDeployment(d.name, change);
      },
    });
    apply.setAttribute("aria-label", `Apply ${d.name}`);
    const cells = [apply];
    if (d.previous_version || d.previous_model) {
      const back = el("button", { type: "button", textContent: "Rollback", onclick: () => rollback(d.name) });
      back.setAttribute("aria-label", `Roll ${d.name} back to ${d.previous_model || d.model} ${d.previous_version}`);
      cells.push(" ", back);
    }
    const row = el("tr", {},
      el("td", { textContent: d.name }),
      el("td", { textContent: d.model }),
      el("td", {}, version),
      el("td", {}, replicas),
      el("td", { className: "ready", textContent: `${d.ready_replicas}/${d.replicas}` }),
      el("td", { className: "wide message", textContent: d.message || "" }),
      el("td", {}, ...cells));
    row.dataset.deployment = d.name;
    return row;
  })));
}

const JOB_STEPS = { PENDING: 1, RUNNING: 2, SUCCEEDED: 3, FAILED: 3, CANCELLED: 3 };

function renderJobs(jobs) {
  $("jobs-section").hidden = jobs === null;
  if (!jobs) return;
  const now = Date.now();
  $("jobs").tBodies[0].replaceChildren(...jobs.map((j) => {
    const progress = el("progress", { max: 3, value: JOB_STEPS[j.state] || 0 });
    progress.setAttribute("aria-label", `${j.id}: ${j.state}`);
    const end = j.finished_unix_ms || now;
    const took = j.started_unix_ms ? `${((end - j.started_unix_ms) / 1000).toFixed(1)} s` : `waiting ${((now - j.created_unix_ms) / 1000).toFixed(0)} s`;
    const row = el("tr", {},
      el("td", { textContent: j.id.slice(0, 8), title: j.id }),
      el("td", { textContent: `${j.model}${j.version ? ` v${j.version}` : ""}` }),
      el("td", { className: `job-${j.state}` }, progress, ` ${j.state.toLowerCase()}`),
      el("td", { className: "wide", textContent: took }),
      el("td", { className: "wide", textContent: j.attempts }),
      el("td", { className: "wide", textContent: j.worker || "-" }),
      el("td", { className: "wide message", textContent: j.message || "" }));
    row.dataset.job = j.id;
    return row;
  }));
  if (!jobs.length) $("jobs").tBodies[0].append(el("tr", {}, el("td", { colSpan: 7, textContent: "no jobs yet" })));
}

function render(state, how) {
  renderWorkers(state.workers);
  renderModels(state.models);
  renderDeployments(state.deployments ?? null);
  renderJobs(state.jobs ?? null);
  const ready = state.workers.filter((x) => x.state === "Ready").length;
  const summary = `${ready}/${state.workers.length} workers ready`;
  // Announced only when it changes, not with every update.
  if ($("status").textContent !== summary) $("status").textContent = summary;
  $("updated").textContent = `${how}, updated ${new Date().toLocaleTimeString()}`;
  $("updated").dataset.how = how;
}

// Short polling: the fallback where server-sent events cannot be opened.
async function refresh() {
  try {
    const [w, m] = await Promise.all([api("GET", "/api/v1/workers"), api("GET", "/api/v1/models")]);
    const [d, j] = await Promise.all([
      api("GET", "/api/v1/deployments").catch(() => null),
      api("GET", "/api/v1/jobs").catch(() => null)]);
    render({ workers: w.workers, models: m.models, deployments: d?.deployments, jobs: j?.jobs }, "polling");
  } catch (e) {
    showProblem(e);
  }
}

function showProblem(e) {
  if (e.message !== "unauthorized") $("status").textContent = e.message.startsWith("this key")
    ? e.message : `cannot reach the cluster: ${e.message}`;
}

// Polls every 2 s; from `retryAt` on it tries live updates again (a scheduler that was
// restarting when the page asked serves them again).
async function poll(g, retryAt = Infinity) {
  await refresh();
  if (g !== generation) return;
  timer = setTimeout(() => (Date.now() >= retryAt ? live(g) : poll(g, retryAt)), 2000);
}

// Live updates: a ticket got with the key opens one event stream; when the stream drops
// (a restart, the network) a new ticket opens the next, after two seconds.
async function live(g) {
  let ticket;
  try {
    ticket = (await api("POST", "/api/v1/events/ticket")).ticket;
  } catch (e) {
    if (g !== generation) return;
    showProblem(e);
    if (e.message === "unauthorized" || e.message.startsWith("this key")) return;
    // No events now: poll, and try again in 30 s.
    timer = setTimeout(() => poll(g, Date.now() + 30000), 2000);
    return;
  }
  if (g !== generation) return;
  events = new EventSource(`/api/v1/events?ticket=${encodeURIComponent(ticket)}`);
  events.addEventListener("cluster", (e) => { if (g === generation) render(JSON.parse(e.data), "live"); });
  events.addEventListener("error", (e) => {
    if (g !== generation) return;
    events?.close();
    if (e.data) { // the scheduler ended the stream, saying why
      const why = JSON.parse(e.data);
      if (why.status === 401) { showSignIn(why.error); return; }
      $("status").textContent = why.error;
      if (why.status === 403) return; // this key may not see the cluster
    }
    $("updated").textContent = "reconnecting…";
    timer = setTimeout(() => live(g), 2000);
  });
}

async function cordon(name, on) {
  if (!on) draining.delete(name);
  try {
    await api("POST", `/api/v1/workers/${encodeURIComponent(name)}/${on ? "cordon" : "uncordon"}`);
    $("status").textContent = `${name} ${on ? "cordoned" : "uncordoned"}`;
  } catch (e) {
    $("status").textContent = e.message;
  }
}

async function drainWorker(name) {
  draining.add(name);
  await cordon(name, true);
}

async function changeDeployment(name, change) {
  try {
    if ("replicas" in change) {
      const n = String(change.replicas).trim();
      if (!/^\d+$/.test(n)) throw new Error("replicas must be a whole number (0 removes every replica)");
      change.replicas = Number(n);
    }
    if (!Object.keys(change).length) throw new Error("nothing changed");
    const d = await api("POST", `/api/v1/deployments/${encodeURIComponent(name)}`, change);
    $("operate-status").textContent = `${d.name}: ${d.model} ${d.version || "newest"}, ${d.replicas} replicas`;
  } catch (e) {
    $("operate-status").textContent = `${name}: ${e.message}`;
  }
}

async function rollback(name) {
  try {
    const d = await api("POST", `/api/v1/deployments/${encodeURIComponent(name)}/rollback`);
    $("operate-status").textContent = `${d.name}: rolling back to ${d.model} ${d.version || "newest"}`;
  } catch (e) {
    $("operate-status").textContent = `${name}: ${e.message}`;
  }
}

async function showCatalog() {
  try {
    const { versions } = await api("GET", "/api/v1/catalog");
    $("catalog").tBodies[0].replaceChildren(...versions.map((v) => {
      const row = el("tr", {},
        el("td", { textContent: v.name }), el("td", { textContent: v.version }),
        el("td", { textContent: ["fp32", ...v.variants].join(", ") }),
        el("td", { textContent: v.files }), el("td", { textContent: bytes(v.bytes) }));
      row.dataset.version = `${v.name}:${v.version}`;
      return row;
    }));
  } catch (e) {
    if (e.message !== "unauthorized") $("operate-status").textContent = `catalog: ${e.message}`;
  }
}

function start() {
  for (const id of ["signin", "open-models"]) $(id).hidden = true;
  $("cluster").hidden = false; $("operate").hidden = false;
  $("signout").hidden = !sessionStorage.getItem(KEY);
  stopLive();
  live(generation);
  showCatalog();
}

// ---- Upload a model into the catalog ------------------------------------------------

async function sha256Hex(file) {
  const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

// Sends `file` from what the scheduler already holds (a resumed upload sends the rest),
// reporting bytes sent through `progress(sent)`.
function putBlob(file, sha256, offset, progress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", `/api/v1/blobs/${sha256}?size=${file.size}&offset=${offset}`);
    for (const [k, v] of Object.entries(headers({ "Content-Type": "application/octet-stream" }))) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => progress(offset + e.loaded);
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new Error(body?.error || `${xhr.status} ${xhr.statusText}`));
    };
    xhr.onerror = () => reject(new Error("the connection dropped; upload again to send the rest"));
    xhr.send(file.slice(offset));
  });
}

async function upload(event) {
  event.preventDefault();
  const status = $("upload-status");
  const bar = $("upload-progress");
  const name = $("upload-name").value.trim();
  const files = [...$("upload-files").files];
  const config = $("upload-config").files[0];
  try {
    if (!files.some((f) => f.name === "model.onnx" || f.name.endsWith(".onnx"))) throw new Error("choose a .onnx file");
    $("upload-button").disabled = true;
    const total = files.reduce((s, f) => s + f.size, 0);
    let done = 0;
    const refs = [];
    for (const file of files) {
      status.textContent = `checking ${file.name}…`;
      const sha256 = await sha256Hex(file);
      const held = await api("GET", `/api/v1/blobs/${sha256}`);
      const offset = held.complete ? file.size : held.received;
      const started = performance.now();
      if (offset < file.size) {
        await putBlob(file, sha256, offset, (sent) => {
          bar.max = total; bar.value = done + sent;
          const rate = (sent - offset) / Math.max((performance.now() - started) / 1000, 1e-3);
          const eta = rate > 0 ? Math.round((file.size - sent) / rate) : "?";
          status.textContent = `${file.name}: ${bytes(sent)} of ${bytes(file.size)}, ${bytes(rate)}/s, ${eta} s left`;
        });
      }
      done += file.size;
      bar.max = total; bar.value = done;
      // One .onnx file is the version's model.onnx, whatever it was called.
      const path = file.name.endsWith(".onnx") && files.filter((f) => f.name.endsWith(".onnx")).length === 1 ? "model.onnx" : file.name;
      refs.push({ path, sha256, size: file.size });
    }
    status.textContent = "adding the version to the catalog…";
    const added = await api("POST", "/api/v1/catalog", {
      name, version: $("upload-version").value.trim(), variant: $("upload-variant").value,
      config_yaml: config ? await config.text() : "", files: refs,
    });
    status.textContent = `pushed ${added.name} version ${added.version} (${added.files} files, ${added.bytes} bytes)`;
    status.dataset.pushed = `${added.name}:${added.version}`;
    await showCatalog();
  } catch (e) {
    if (e.message !== "unauthorized") status.textContent = `upload failed: ${e.message}`;
  } finally {
    $("upload-button").disabled = false;
  }
}

// ---- Try a model -----------------------------------------------------------------------

function concreteShape(shape) { return shape.map((d) => (d < 0 ? 1 : d)); }

function randomValues(datatype, count) {
  const out = [];
  for (let i = 0; i < count; i++) {
    if (datatype === "BOOL") out.push(Math.random() < 0.5);
    else if (datatype === "BYTES") out.push(Math.random().toString(36).slice(2, 8));
    else if (datatype.startsWith("FP")) out.push(Number(Math.random().toFixed(4)));
    else out.push(Math.floor(Math.random() * 100));
  }
  return out;
}

// config.yaml's `task:`, from the model's config (the `localml.task` parameter).
async function taskOf(model) {
  try {
    const path = `/v2/models/${encodeURIComponent(model.name)}/versions/${encodeURIComponent(model.version)}/config`;
    const config = await api("GET", path);
    const text = config.parameters?.["localml.task"]?.string_value;
    return text ? JSON.parse(text) : null;
  } catch {
    return null;
  }
}

async function openTry(model) {
  trying = { ...model, task: null };
  $("try").hidden = false;
  $("try-model").textContent = `${model.name} v${model.version}`;
  $("try-error").textContent = "";
  $("try-outputs").replaceChildren();
  $("try-inputs").replaceChildren(...model.inputs.map((t) => {
    const id = `input-${t.name}`;
    const area = el("textarea", { id, spellcheck: false });
    const shape = el("input", { id: `shape-${t.name}`, value: JSON.stringify(concreteShape(t.shape)), size: 16 });
    const file = el("input", { id: `file-${t.name}`, type: "file", accept: ".npy,.json,application/json", onchange: () => loadFile(t, file.files[0]) });
    return el("div", { className: "input-row" },
      el("label", { htmlFor: shape.id, textContent: `${t.name} ${t.datatype}, shape (model: [${t.shape.join(", ")}]) ` }),
      shape,
      el("label", { htmlFor: file.id, textContent: " from a .npy or JSON file " }), file,
      el("label", { htmlFor: id, textContent: " values (JSON)" }),
      area);
  }));
  $("try-photo-row").hidden = true;
  fillValues();
  $("try").scrollIntoView();
  $("try-run").focus();
  const task = await taskOf(model);
  if (trying?.name !== model.name || trying?.version !== model.version || !task) return;
  trying.task = task;
  $("try-photo-row").hidden = false;
  $("try-photo-hint").textContent = `resized to ${task.width}x${task.height}, ${task.channels}, ${task.layout}`;
}

function shapeOf(t) {
  const shape = JSON.parse($(`shape-${t.name}`).value);
  if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) {
    throw new Error(`the shape of ${t.name} must be a JSON array of sizes, e.g. [1, 16]`);
  }
  return shape;
}

function fillRandom() {
  $("try-error").textContent = "";
  try { fillValues(); } catch (e) { $("try-error").textContent = e.message; }
}

function fillValues() {
  for (const t of trying.inputs) {
    const count = shapeOf(t).reduce((a, b) => a * b, 1);
    $(`input-${t.name}`).value = JSON.stringify(randomValues(t.datatype, count));
  }
}

// A .npy file (numpy.save) or JSON: a nested array, or {"shape": [...], "data": [...]}.
async function loadFile(t, file) {
  $("try-error").textContent = "";
  if (!file) return;
  try {
    let shape, data;
    if (file.name.endsWith(".npy")) {
      ({ shape, data } = fromNpy(await file.arrayBuffer()));
    } else {
      const json = JSON.parse(await file.text());
      if (Array.isArray(json)) {
        shape = [];
        for (let level = json; Array.isArray(level); level = level[0]) shape.push(level.length);
        data = json.flat(Infinity);
      } else if (json && Array.isArray(json.data)) {
        data = json.data.flat(Infinity);
        shape = json.shape || [data.length];
      } else {
        throw new Error("expected an array, or an object with \"data\" (and \"shape\")");
      }
    }
    const count = shape.reduce((a, b) => a * b, 1);
    if (count !== data.length) throw new Error(`shape [${shape}] needs ${count} values, the file has ${data.length}`);
    $(`shape-${t.name}`).value = JSON.stringify(shape);
    $(`input-${t.name}`).value = JSON.stringify(data);
  } catch (e) {
    $("try-error").textContent = `${file.name}: ${e.message}`;
  }
}

// A photo from the camera or the gallery, preprocessed as the model's task says.
async function loadPhoto() {
  $("try-error").textContent = "";
  const file = $("try-photo").files[0];
  if (!file || !trying?.task) return;
  try {
    const { shape, data, preview } = await imageTensor(file, trying.task);
    const [t] = trying.inputs;
    $(`shape-${t.name}`).value = JSON.stringify(shape);
    $(`input-${t.name}`).value = JSON.stringify(data);
    $("try-photo-preview").replaceChildren(preview);
  } catch (e) {
    $("try-error").textContent = `${file.name}: ${e.message}`;
  }
}

async function run() {
  $("try-error").textContent = "";
  try {
    const inputs = trying.inputs.map((t) => ({
      name: t.name, datatype: t.datatype, shape: shapeOf(t),
      data: JSON.parse($(`input-${t.name}`).value),
    }));
    const path = `/v2/models/${encodeURIComponent(trying.name)}/versions/${encodeURIComponent(trying.version)}/infer`;
    const answer = await api("POST", path, { inputs });
    showOutputs(answer);
  } catch (e) {
    $("try-error").textContent = e.message;
  }
}

function showOutputs(answer) {
  const worker = answer.parameters?.["localml.worker"];
  const labels = trying.task?.labels || [];
  const blocks = answer.outputs.map((o) => {
    const values = o.data.slice(0, 20).map((v) => (typeof v === "number" ? Number(v.toPrecision(6)) : v));
    const block = el("div", { className: "output" },
      el("h3", { textContent: `${o.name} ${o.datatype} [${o.shape.join(", ")}]` }),
      el("p", { textContent: values.join(", ") + (o.data.length > 20 ? ", …" : "") }));
    if (o.datatype.startsWith("FP") && o.data.length > 1) {
      const named = labels.length && labels.length === o.data.length;
      const top = o.data.map((v, i) => [v, i]).sort((a, b) => b[0] - a[0]).slice(0, named ? 5 : 3);
      if (named) {
        const table = el("table", { className: "top" },
          ...top.map(([v, i]) => el("tr", {}, el("td", { textContent: labels[i] }), el("td", { textContent: Number(v.toPrecision(4)) }))));
        block.append(el("p", { textContent: "top:" }), table);
        block.dataset.top = labels[top[0][1]];
      } else {
        block.append(el("p", { textContent: `top: ${top.map(([v, i]) => `#${i} (${Number(v.toPrecision(4))})`).join(", ")}` }));
      }
    }
    block.dataset.output = o.name;
    return block;
  });
  $("try-outputs").replaceChildren(el("p", { textContent: `served by ${worker || "?"}` }), ...blocks);
}

$("signin-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("key").value.trim());
  $("key").value = "";
  start();
});
$("signout").addEventListener("click", () => { sessionStorage.removeItem(KEY); showSignIn(""); });
$("try-random").addEventListener("click", fillRandom);
$("try-run").addEventListener("click", run);
$("try-photo").addEventListener("change", loadPhoto);
$("upload-form").addEventListener("submit", upload);
$("deploy-form").addEventListener("submit", (event) => {
  event.preventDefault();
  changeDeployment($("deploy-name").value.trim(), {
    model: $("deploy-model").value.trim(), version: $("deploy-version").value.trim(),
    replicas: $("deploy-replicas").value,
  });
});

// Models an operator opened to everyone without a key (an anonymous key): said on the page.
async function showAccess() {
  try {
    const response = await fetch("/api/v1/access");
    const access = await response.json();
    if (access.anonymous) {
      $("open-access").textContent =
        `Open to everyone on this network without a key: ${access.anonymous.models.join(", ")} (key ${access.anonymous.key})`;
      $("open-access").hidden = false;
    }
    return access;
  } catch { return null; /* older scheduler: nothing to show */ }
}

// A visitor without a key where models are open to everyone (a kiosk): those models, each
// with its Try form (from the model's OIP metadata), and a way in for the operator.
async function showOpenModels(models) {
  stopLive();
  for (const id of ["signin", "cluster", "operate"]) $(id).hidden = true;
  $("open-models").hidden = false;
  const items = [];
  for (const name of models) {
    try {
      const meta = await api("GET", `/v2/models/${encodeURIComponent(name)}`);
      const model = { name: meta.name, version: meta.versions.at(-1), inputs: meta.inputs };
      const button = el("button", { type: "button", textContent: `Try ${name}`, onclick: () => openTry(model) });
      const item = el("li", {}, button);
      item.dataset.model = name;
      items.push(item);
    } catch (e) {
      items.push(el("li", { textContent: `${name}: ${e.message}` }));
    }
  }
  $("open-list").replaceChildren(...items);
}

$("operator-signin").addEventListener("click", () => showSignIn(""));

async function boot() {
  const access = await showAccess();
  if (access?.keys_required && access.anonymous && !sessionStorage.getItem(KEY)) {
    await showOpenModels(access.anonymous.models);
  } else {
    start();
  }
}
boot();
