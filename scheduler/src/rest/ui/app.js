// localml's web page: cluster state, try a model, cordon workers. Talks to the REST
// listener it came from: /api/v1/ (admin) and the Open Inference Protocol under /v2.
// The API key stays in this tab's sessionStorage and goes in the Authorization header
// only, never in a URL.

const $ = (id) => document.getElementById(id);
const KEY = "localml.key";
// Each start of polling gets a new generation; a refresh of an older one schedules nothing.
let generation = 0;
let timer = null;
let trying = null;

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
  if (response.status === 403 && path.startsWith("/api/")) {
    stopRefresh();
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
  return n >= 2 ** 30 ? `${(n / 2 ** 30).toFixed(1)} GiB` : `${Math.round(n / 2 ** 20)} MiB`;
}

function power(p) {
  if (p.source === "battery" || p.source === "ups") {
    const pct = p.battery_percent == null ? "" : ` ${Math.round(p.battery_percent)}%`;
    const mins = p.runtime_seconds == null ? "" : `, ${Math.round(p.runtime_seconds / 60)} min`;
    return el("span", { className: "battery", textContent: `${p.source === "ups" ? "UPS" : "Battery"}${pct}${mins}` });
  }
  return p.source === "mains" ? "Mains" : "Unknown";
}

function memoryBar(total, free) {
  const used = total ? (total - free) / total : 0;
  const bar = el("span", { className: "bar", title: `${bytes(total - free)} of ${bytes(total)} used` });
  const fill = el("span");
  fill.style.width = `${Math.round(used * 100)}%`;
  bar.append(fill);
  return el("span", {}, bar, ` ${bytes(free)} free`);
}

function stopRefresh() { generation++; clearTimeout(timer); }

// The tables are rebuilt on each refresh; the focused button is found again by its row's
// key and label, so keyboard users keep their place.
function keepFocus(table, key, render) {
  const active = document.activeElement;
  const row = active && table.contains(active) ? active.closest("tr") : null;
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
  stopRefresh();
  $("cluster").hidden = true; $("try").hidden = true; $("signout").hidden = true;
  $("open-models").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = sessionStorage.getItem(KEY) ? message : "";
  $("key").focus();
}

function renderWorkers(workers) {
  keepFocus($("workers"), "worker", () => $("workers").tBodies[0].replaceChildren(...workers.map((w) => {
    const action = el("button", {
      type: "button",
      textContent: w.cordoned ? "Uncordon" : "Cordon",
      onclick: () => cordon(w.name, !w.cordoned),
    });
    action.setAttribute("aria-label", `${w.cordoned ? "Uncordon" : "Cordon"} ${w.name}`);
    const state = w.state + (w.cordoned ? ", cordoned" : "") + (w.draining ? ", draining" : "");
    const row = el("tr", {},
      el("td", { textContent: w.name }),
      el("td", { className: `state-${w.state}`, textContent: state, title: w.reason }),
      el("td", {}, power(w.power)),
      el("td", { className: "wide" }, memoryBar(w.ram_total_bytes, w.ram_free_bytes)),
      el("td", { className: "wide", textContent: w.queue }),
      el("td", { className: "wide", textContent: w.in_flight }),
      el("td", { className: "wide", textContent: w.models.length }),
      el("td", {}, action));
    row.dataset.worker = w.name;
    return row;
  })));
}

// A latency in milliseconds, as the table shows it ("-" before the first request).
function millis(ms) {
  if (ms === null || ms === undefined) return "-";
  return ms < 10 ? `${ms.toFixed(2)} ms` : `${Math.round(ms)} ms`;
}

function renderModels(models) {
  keepFocus($("models"), "model", () => $("models").tBodies[0].replaceChildren(...models.map((m) => {
    const button = el("button", { type: "button", textContent: "Try", onclick: () => openTry(m) });
    button.setAttribute("aria-label", `Try ${m.name} version ${m.version}`);
    const row = el("tr", {},
      el("td", { textContent: m.name }),
      el("td", { textContent: m.version }),
      el("td", { className: "wide", textContent: m.ready_workers.join(", ") || "nowhere" }),
      el("td", { className: "wide", textContent: m.requests_ok }),
      el("td", { className: "wide", textContent: m.requests_failed }),
      el("td", { className: "wide latency", textContent: millis(m.p50_ms) }),
      el("td", { className: "wide latency", textContent: millis(m.p99_ms) }),
      el("td", {}, button));
    row.dataset.model = `${m.name}:${m.version}`;
    return row;
  })));
}

async function refresh() {
  try {
    const [w, m] = await Promise.all([api("GET", "/api/v1/workers"), api("GET", "/api/v1/models")]);
    renderWorkers(w.workers);
    renderModels(m.models);
    const ready = w.workers.filter((x) => x.state === "Ready").length;
    const summary = `${ready}/${w.workers.length} workers ready`;
    // Announced only when it changes, not with every refresh.
    if ($("status").textContent !== summary) $("status").textContent = summary;
    $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    if (e.message !== "unauthorized") $("status").textContent = e.message.startsWith("this key")
      ? e.message : `cannot reach the cluster: ${e.message}`;
  }
}

// One refresh at a time: the next is scheduled when this one has finished.
async function poll(g) {
  await refresh();
  if (g === generation) timer = setTimeout(() => poll(g), 2000);
}

async function cordon(name, on) {
  try {
    await api("POST", `/api/v1/workers/${encodeURIComponent(name)}/${on ? "cordon" : "uncordon"}`);
    await refresh();
  } catch (e) {
    $("status").textContent = e.message;
  }
}

function start() {
  $("signin").hidden = true; $("cluster").hidden = false; $("open-models").hidden = true;
  $("signout").hidden = !sessionStorage.getItem(KEY);
  stopRefresh();
  poll(generation);
}

// Try a model: one text area per input, filled with random values of the right count.
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

function openTry(model) {
  trying = model;
  $("try").hidden = false;
  $("try-model").textContent = `${model.name} v${model.version}`;
  $("try-error").textContent = "";
  $("try-outputs").replaceChildren();
  $("try-inputs").replaceChildren(...model.inputs.map((t) => {
    const id = `input-${t.name}`;
    const area = el("textarea", { id, spellcheck: false });
    const shape = el("input", { id: `shape-${t.name}`, value: JSON.stringify(concreteShape(t.shape)), size: 16 });
    return el("div", { className: "input-row" },
      el("label", { htmlFor: shape.id, textContent: `${t.name} ${t.datatype}, shape (model: [${t.shape.join(", ")}]) ` }),
      shape,
      el("label", { htmlFor: id, textContent: " values (JSON)" }),
      area);
  }));
  fillValues();
  $("try").scrollIntoView();
  $("try-run").focus();
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
  const blocks = answer.outputs.map((o) => {
    const values = o.data.slice(0, 20).map((v) => (typeof v === "number" ? Number(v.toPrecision(6)) : v));
    const block = el("div", { className: "output" },
      el("h3", { textContent: `${o.name} ${o.datatype} [${o.shape.join(", ")}]` }),
      el("p", { textContent: values.join(", ") + (o.data.length > 20 ? ", …" : "") }));
    if (o.datatype.startsWith("FP") && o.data.length > 1) {
      const top = o.data.map((v, i) => [v, i]).sort((a, b) => b[0] - a[0]).slice(0, 3);
      block.append(el("p", { textContent: `top: ${top.map(([v, i]) => `#${i} (${Number(v.toPrecision(4))})`).join(", ")}` }));
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
  stopRefresh();
  $("signin").hidden = true; $("cluster").hidden = true; $("open-models").hidden = false;
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
