// localml's web page: cluster state, try a model, cordon workers. Talks to the REST
// listener it came from: /api/v1/ (admin) and the Open Inference Protocol under /v2.
// The API key stays in this tab's sessionStorage and goes in the Authorization header
// only, never in a URL.

const $ = (id) => document.getElementById(id);
const KEY = "localml.key";
let refreshing = null;
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

function showSignIn(message) {
  clearInterval(refreshing);
  $("cluster").hidden = true; $("try").hidden = true; $("signout").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = sessionStorage.getItem(KEY) ? message : "";
  $("key").focus();
}

function renderWorkers(workers) {
  const body = $("workers").tBodies[0];
  body.replaceChildren(...workers.map((w) => {
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
  }));
}

function renderModels(models) {
  const body = $("models").tBodies[0];
  body.replaceChildren(...models.map((m) => {
    const button = el("button", { type: "button", textContent: "Try", onclick: () => openTry(m) });
    button.setAttribute("aria-label", `Try ${m.name} version ${m.version}`);
    const row = el("tr", {},
      el("td", { textContent: m.name }),
      el("td", { textContent: m.version }),
      el("td", { className: "wide", textContent: m.ready_workers.join(", ") || "nowhere" }),
      el("td", { className: "wide", textContent: m.requests_ok }),
      el("td", { className: "wide", textContent: m.requests_failed }),
      el("td", {}, button));
    row.dataset.model = `${m.name}:${m.version}`;
    return row;
  }));
}

async function refresh() {
  try {
    const [w, m] = await Promise.all([api("GET", "/api/v1/workers"), api("GET", "/api/v1/models")]);
    renderWorkers(w.workers);
    renderModels(m.models);
    const ready = w.workers.filter((x) => x.state === "Ready").length;
    $("status").textContent = `${ready}/${w.workers.length} workers ready · updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    if (e.message !== "unauthorized") $("status").textContent = `cannot reach the cluster: ${e.message}`;
  }
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
  $("signin").hidden = true; $("cluster").hidden = false;
  $("signout").hidden = !sessionStorage.getItem(KEY);
  refresh();
  clearInterval(refreshing);
  refreshing = setInterval(refresh, 2000);
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
    area.dataset.name = t.name;
    return el("div", { className: "input-row" },
      el("label", { htmlFor: id, textContent: `${t.name} ${t.datatype} [${concreteShape(t.shape).join(", ")}] (JSON values)` }),
      area);
  }));
  fillRandom();
  $("try").scrollIntoView();
  $("try-run").focus();
}

function fillRandom() {
  for (const t of trying.inputs) {
    const count = concreteShape(t.shape).reduce((a, b) => a * b, 1);
    $(`input-${t.name}`).value = JSON.stringify(randomValues(t.datatype, count));
  }
}

async function run() {
  $("try-error").textContent = "";
  try {
    const inputs = trying.inputs.map((t) => ({
      name: t.name, datatype: t.datatype, shape: concreteShape(t.shape),
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
start();
