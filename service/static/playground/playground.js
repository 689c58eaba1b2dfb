// gradsvc playground: builds a POST v1/gradients (or v1/check) body from the form, shows the numbers, the graph picture
// and the problem+json errors next to the fields they name.  Plain browser JavaScript, no build step, no libraries.
// Every URL is relative to the page, so the page works at / and behind a gateway prefix such as /grad/.
"use strict";

const NEURON_INPUTS = { x: "6.7", y: "0", w: "1", b: "0" };          // the tutorial's neuron
const RESERVED = new Set(["model", "name", "formula", "loss", "reduction", "mode", "dtype", "tab"]);
const SVG_TYPE = "image/svg+xml";
const MINUS = "\u2212";
// A request still unanswered after this long is cancelled and reported (the service's own deadline,
// MAX_WALL_SECONDS, is 10 s by default; 30 s leaves room for a queue at the workers and a slow network).
const REQUEST_TIMEOUT_MS = 30_000;

const $ = (sel) => document.querySelector(sel);
const state = {
  catalog: [], catalogError: null, graph: null, seq: 0, timer: null,
  computing: null, checking: null,   // the AbortControllers of the requests in flight
};

// ---------- formatting ---------------------------------------------------------------------------------------------

/** A number as a person reads it: 4 decimals from 1 up, 4 significant digits below 1, an exponent when tiny or huge,
 *  trailing zeros dropped, a real minus sign.  The exact JSON value is on hover and in the node panel. */
function fmt(value) {
  if (Array.isArray(value)) return "[" + value.map(fmt).join(", ") + "]";
  if (typeof value !== "number") return String(value);  // "NaN", "Infinity", "-Infinity" as the JSON spells them
  const abs = Math.abs(value);
  let text;
  if (abs === 0) text = "0";
  else if (abs >= 1 && abs < 1e6) text = value.toFixed(4).replace(/\.?0+$/, "");
  else if (abs >= 1e-4 && abs < 1) text = value.toPrecision(4).replace(/\.?0+$/, "");
  else text = value.toExponential(3);
  return text.replace("-", MINUS);
}

/** The exact JSON text of a value (shown on hover and in the node panel). */
const exact = (value) => JSON.stringify(value);

// ---------- the form -> a request body -----------------------------------------------------------------------------

function kind() { return document.querySelector("input[name=kind]:checked").value; }

/** A number JSON cannot carry (1e400 parses to Infinity, which JSON.stringify would send as null) as the string
 *  the API reads for it: "Infinity", "-Infinity", "NaN"; lists element by element. */
function jsonSafe(value) {
  if (Array.isArray(value)) return value.map(jsonSafe);
  if (typeof value !== "number" || Number.isFinite(value)) return value;
  return Number.isNaN(value) ? "NaN" : value > 0 ? "Infinity" : "-Infinity";
}

/** An input's text as JSON when it parses as a number or list; otherwise the text itself, so the service names the
 *  problem next to the field (the page never second-guesses the API's validation). */
function parseValue(text) {
  const t = text.trim();
  try {
    const v = JSON.parse(t);
    if (typeof v === "number" || Array.isArray(v) || ["NaN", "Infinity", "-Infinity"].includes(v)) return jsonSafe(v);
  } catch (err) { /* not JSON: send as typed */ }
  if (["NaN", "Infinity", "-Infinity"].includes(t)) return t;
  return t;
}

function inputRows() { return [...document.querySelectorAll("#inputs .input-row")]; }

function currentInputs() {
  const inputs = {};
  for (const row of inputRows()) inputs[row.dataset.name] = parseValue(row.querySelector("input").value);
  return inputs;
}

function currentModel() {
  const k = kind();
  if (k === "neuron") return { kind: "neuron", loss: $("#loss").value, reduction: $("#reduction").value };
  if (k === "name") return { kind: "expression", name: $("#name").value };
  return { kind: "expression", formula: $("#formula").value };
}

function gradientsBody() {
  return { model: currentModel(), inputs: currentInputs(), mode: $("#mode").value, dtype: $("#dtype").value,
           include: ["graph"] };
}

/** Which inputs get gradients: the neuron's w and b (the service's default), every input of an expression. */
function wrtNames() {
  return kind() === "neuron" ? ["w", "b"] : inputRows().map((row) => row.dataset.name);
}

// ---------- inputs editor ------------------------------------------------------------------------------------------

/** A labelled text input with the element its problem+json error is shown in: `<div class="field">`. */
function textField(id, label, errorId) {
  const div = document.createElement("div");
  div.className = "field";
  const l = document.createElement("label");
  l.htmlFor = id;
  l.textContent = label;
  const input = document.createElement("input");
  input.type = "text";
  input.id = id;
  input.autocomplete = "off";
  input.spellcheck = false;
  input.setAttribute("aria-describedby", errorId);
  const error = document.createElement("p");
  error.className = "error";
  error.id = errorId;
  error.setAttribute("role", "alert");
  div.append(l, input, error);
  return div;
}

function makeRow(name, value) {
  const row = textField("input-" + name, name, "err-inputs." + name);
  row.classList.add("input-row");
  row.dataset.name = name;
  row.dataset.field = "inputs." + name;
  const input = row.querySelector("input");
  input.value = value;
  input.addEventListener("input", scheduleCompute);
  if (!INPUT_NAME.test(name)) {   // the formula may use it, but the service refuses it as an input name
    const hint = document.createElement("p");
    hint.className = "hint notice";
    hint.textContent = `The service takes input names of ASCII letters, digits and _ only: '${name}' cannot be ` +
      "an input; rename it in the formula.";
    row.append(hint);
  }
  return row;
}

/** Replace the input rows by `names`, keeping values already typed and taking the rest from `defaults`. */
function setInputs(names, defaults) {
  const old = currentInputsText();
  const box = $("#inputs");
  box.replaceChildren(...names.map((n) => makeRow(n, n in old ? old[n] : (defaults[n] ?? "1"))));
  renderAnswerFields();
}

function currentInputsText() {
  const out = {};
  for (const row of inputRows()) out[row.dataset.name] = row.querySelector("input").value;
  return out;
}

// The service's formulas are Python expressions: a name is a Python identifier (Unicode XID_Start or _, then
// XID_Continue), NFKC-normalized as Python's parser does ("ﬁ" is the name "fi"). Inputs, though, must be named
// ^[A-Za-z_][A-Za-z0-9_]{0,63}$ (schemas/requests.py), so a non-ASCII name gets a field with a notice.
const IDENTIFIER = /(?<![\p{XID_Continue}.])([\p{XID_Start}_]\p{XID_Continue}*)(?!\p{XID_Continue})(?!\s*\()/gu;
const INPUT_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;

/** Input names of a formula: identifiers that are not followed by "(" (a function) and not the constants pi, e. */
function formulaVariables(formula) {
  const names = [];
  for (const m of formula.matchAll(IDENTIFIER)) {
    const name = m[1].normalize("NFKC");
    if (!["pi", "e"].includes(name) && !names.includes(name)) names.push(name);
  }
  return names;
}

function syncInputs(defaults = {}) {
  const k = kind();
  if (k === "neuron") setInputs(Object.keys(NEURON_INPUTS), { ...NEURON_INPUTS, ...defaults });
  else if (k === "name") {
    const name = $("#name").value;
    const entry = state.catalog.find((e) => e.name === name);
    const about = $("#name-formula");
    about.textContent = entry ? `${entry.formula} — ${entry.description}`
      : state.catalogError ? `The catalog could not be loaded (${state.catalogError})` +
        (name ? `: the entry '${name}' from the link is sent as it is, with the inputs from the link.` : ".")
      : name ? `Unknown catalog entry '${name}' (from the link): pick one from the list.` : "";
    about.classList.toggle("notice", !entry && Boolean(about.textContent));
    const example = {};
    if (entry) for (const [n, v] of Object.entries(entry.example || {})) example[n] = JSON.stringify(v);
    $("#inputs").replaceChildren();   // a catalog entry starts from its own example point
    setInputs(entry ? entry.variables : Object.keys(defaults), { ...example, ...defaults });
  } else {
    const fromUrl = Object.keys(defaults);
    const names = formulaVariables($("#formula").value);
    for (const n of fromUrl) if (!names.includes(n)) names.push(n);
    setInputs(names, defaults);
  }
  for (const el of document.querySelectorAll("[data-kind]")) el.hidden = el.dataset.kind !== k;
}

// ---------- talking to the service ---------------------------------------------------------------------------------

function endpoint(path) { return new URL(path, document.baseURI).href; }

function shellQuote(text) { return "'" + text.replace(/'/g, "'\\''") + "'"; }

function showCurl(path, body) {
  $("#curl").value = `curl -s ${shellQuote(endpoint(path))} -H 'Content-Type: application/json' ` +
    `-d ${shellQuote(JSON.stringify(body))}`;
}

/** One round of requests (a compute's JSON and SVG, or a grade): a new round aborts the `previous` one, whose
 *  answer nobody waits for any more (on sync workers it would only queue ahead of the new one), and aborts
 *  itself after REQUEST_TIMEOUT_MS.  finish() stops the timer. */
function startRound(previous) {
  previous?.abort(new DOMException("replaced by a newer request", "AbortError"));
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new DOMException("timed out", "TimeoutError")), REQUEST_TIMEOUT_MS);
  controller.finish = () => clearTimeout(timer);
  return controller;
}

/** Why a request of `round` got no answer, in words a student can act on. */
function noAnswer(err, round) {
  if (round.signal.reason?.name === "TimeoutError") {
    return `The service did not answer within ${REQUEST_TIMEOUT_MS / 1000} s; the request was cancelled. ` +
      "Try again, or with smaller inputs.";
  }
  return `The service did not answer (network error: ${err.message}).`;
}

/** An answer that came but cannot be read as JSON, said as such (not as "no answer"). */
function notJson(answer) {
  return `The service answered (HTTP ${answer.status}), but the body is not ` + (answer.badJson !== undefined
    ? `valid JSON: ${answer.badJson}` : `JSON (Content-Type: ${answer.type || "none"}).`);
}

/** POST `body`.  Resolves to {ok, status, type} with `json` (a JSON content type that parses), `badJson` (one that
 *  does not: the parser's message) or `text`; rejects when no answer arrives (network error, abort, timeout). */
async function post(path, body, accept, signal) {
  const response = await fetch(path, {
    method: "POST", headers: { "Content-Type": "application/json", Accept: accept }, body: JSON.stringify(body),
    signal,
  });
  const text = await response.text();
  const type = response.headers.get("Content-Type") || "";
  const answer = { ok: response.ok, status: response.status, type };
  if (!type.includes("json")) return { ...answer, text };
  try {
    return { ...answer, json: JSON.parse(text) };
  } catch (err) {
    return { ...answer, badJson: err.message };
  }
}

function clearErrors() {
  for (const el of document.querySelectorAll(".error")) el.textContent = "";
  for (const el of document.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

/** Flatten marshmallow's nested `errors` map into [path, message] pairs. */
function flatten(errors, path = []) {
  if (Array.isArray(errors)) return errors.flatMap((e) => (typeof e === "string" ? [[path, e]] : flatten(e, path)));
  if (errors && typeof errors === "object") return Object.entries(errors).flatMap(([k, v]) => flatten(v, [...path, k]));
  return [[path, String(errors)]];
}

/** The error slot for a field path: the longest prefix of the path that has one. */
function slotFor(path) {
  for (let n = path.length; n > 0; n--) {
    const el = document.getElementById("err-" + path.slice(0, n).join("."));
    if (el) return el;
  }
  return null;
}

function mark(slot, message) {
  slot.textContent = slot.textContent ? slot.textContent + "\n" + message : message;
  const control = slot.closest(".field, fieldset")?.querySelector("input:not([type=radio]), select");
  if (control) control.setAttribute("aria-invalid", "true");
}

// Problems without an `errors` map name their field by type.
const FIELD_BY_TYPE = {
  "/problems/invalid-formula": "model.formula", "/problems/non-scalar-output": "model.formula",
  "/problems/unknown-variable": "model.formula", "/problems/unknown-expression": "model.name",
  "/problems/shape-mismatch": "inputs",
};

/** Show an RFC 9457 problem next to the fields it names (`errors`), or by its type, else in `generalId`. */
function showProblem(problem, generalId) {
  const general = document.getElementById(generalId);
  if (problem.errors) {
    for (const [path, message] of flatten(problem.errors)) {
      const slot = slotFor(path);
      mark(slot || general, slot ? message : `${path.join(".")}: ${message}`);
    }
    return;
  }
  let field = FIELD_BY_TYPE[problem.type];
  if (field === "model.formula" && kind() !== "formula") field = "inputs";
  const slot = field ? slotFor(field.split(".")) : null;
  if (slot && !slot.closest("[hidden]")) mark(slot, problem.detail);
  else mark(general, `${problem.title}: ${problem.detail}`);
}

function setStatus(id, text) { document.getElementById(id).textContent = text; }

// ---------- compute ------------------------------------------------------------------------------------------------

function scheduleCompute() {
  clearTimeout(state.timer);
  state.timer = setTimeout(compute, 350);
}

async function compute() {
  clearTimeout(state.timer);
  const body = gradientsBody();
  const seq = ++state.seq;
  const round = state.computing = startRound(state.computing);
  saveUrl();
  showCurl("v1/gradients", body);
  setStatus("status", "computing…");
  const wantPicture = body.mode === "grad";
  // The picture is a second request; if only it fails, the numbers are still shown (with a note for the picture).
  const picturing = wantPicture ? post("v1/gradients", body, SVG_TYPE, round.signal).catch((err) => ({ err }))
    : Promise.resolve(null);
  let answer, picture;
  try {
    answer = await post("v1/gradients", body, "application/json", round.signal);
    picture = await picturing;
  } catch (err) {
    if (seq !== state.seq) return;   // replaced by a newer request: that one reports
    round.finish();
    computeFailed(noAnswer(err, round));
    round.abort();
    return;
  }
  round.finish();
  if (seq !== state.seq) return;   // a newer request is on its way
  if (answer.badJson !== undefined || (answer.ok && !answer.json)) { computeFailed(notJson(answer)); return; }
  clearErrors();
  setStatus("status", answer.ok ? "done" : `error ${answer.status}`);
  document.body.dataset.state = answer.ok ? "ok" : "error";
  if (!answer.ok) {
    if (answer.json) showProblem(answer.json, "err-general");
    else mark($("#err-general"), `HTTP ${answer.status}`);
    showResult(null);
    showGraph(null, null);
    return;
  }
  showResult(answer.json);
  if (!wantPicture) showGraph(null, null, "Inference mode runs without gradient tracking: no graph to draw.");
  else if (picture.err) showGraph(null, null, `No picture: ${noAnswer(picture.err, round)} The numbers are this request's.`);
  else if (picture.ok && picture.text !== undefined) showGraph(picture.text, answer.json.graph);
  else if (picture.json) showGraph(null, null, `No picture: ${picture.json.title}: ${picture.json.detail}`);
  else showGraph(null, null, `No picture: ${picture.badJson !== undefined ? notJson(picture) : `HTTP ${picture.status}`}`);
}

/** No usable answer: the message under the form, and no numbers or picture of earlier inputs left on screen. */
function computeFailed(message) {
  clearErrors();
  setStatus("status", "failed");
  document.body.dataset.state = "error";
  mark($("#err-general"), message);
  showResult(null);
  showGraph(null, null, "No result for these inputs: see the message under the form.");
}

function showResult(body) {
  const loss = $("#loss-value");
  const rows = $("#gradients tbody");
  const warnings = $("#warnings");
  rows.replaceChildren();
  warnings.replaceChildren();
  loss.textContent = body ? fmt(body.loss) : "—";
  loss.title = body ? exact(body.loss) : "";
  if (!body) return;
  for (const [name, grad] of Object.entries(body.gradients || {})) {
    const tr = document.createElement("tr");
    tr.dataset.input = name;
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = name;
    const td = document.createElement("td");
    td.className = "num";
    td.textContent = fmt(grad);
    td.title = exact(grad);
    tr.append(th, td);
    rows.append(tr);
  }
  for (const w of body.warnings) {
    const li = document.createElement("li");
    li.textContent = nameNodes(w, body.graph);
    warnings.append(li);
  }
}

/** "graph.nodes[5].grad: …" names a node by its index in the JSON, which the picture does not show: add the node's
 *  label and op, as the picture and the node panel show them. */
function nameNodes(warning, graph) {
  return warning.replace(/\bgraph\.nodes\[(\d+)\]/g, (path, id) => {
    const node = graph?.nodes?.[Number(id)];
    return node ? `${path} (node ${node.label === null ? "" : `'${node.label}', `}${node.op})` : path;
  });
}

// ---------- the graph picture and the node panel -------------------------------------------------------------------

function nodeName(node) { return node.label ?? `${node.op}#${node.id}`; }

/** A node's name inside ∂a/∂b: parenthesized unless it is a plain identifier. */
function symbol(node) { const name = nodeName(node); return /^\w+$/.test(name) ? name : `(${name})`; }

function showGraph(svgText, graph, note) {
  const box = $("#graph");
  state.graph = graph;
  $("#node").hidden = true;
  box.replaceChildren();
  if (!svgText) {
    if (note) { const p = document.createElement("p"); p.className = "hint"; p.textContent = note; box.append(p); }
    return;
  }
  // Parsed as XML and imported: nothing in it runs (and the page's CSP allows no inline script anyway).
  const doc = new DOMParser().parseFromString(svgText, SVG_TYPE);
  const svg = document.importNode(doc.documentElement, true);
  svg.setAttribute("role", "group");
  svg.setAttribute("aria-label", "autograd graph");
  box.append(svg);
  const byId = new Map(graph.nodes.map((n) => [n.id, n]));
  for (const g of svg.querySelectorAll("g.node")) {
    const node = byId.get(Number(g.id.replace("node-", "")));
    if (!node) continue;
    g.setAttribute("tabindex", "0");
    g.setAttribute("role", "button");
    g.setAttribute("aria-label", `${node.op} ${node.label ?? ""}`.trim());
    g.addEventListener("click", () => showNode(node.id));
    g.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); showNode(node.id); }
    });
  }
}

/** Follow single consumers from `id` towards the root: [id, consumer, consumer's consumer, ...]; stops where a
 *  tensor feeds several operations (its gradient is then a sum over the branches, read from the graph). */
function pathToRoot(graph, id) {
  const path = [id];
  let at = id;
  while (at !== graph.root && path.length <= graph.nodes.length) {
    const uses = graph.edges.filter((e) => e.from === at);
    if (uses.length !== 1) break;
    at = uses[0].to;
    path.push(at);
  }
  return path;
}

/** The chain rule as a product: dL/d(node) = dL/d(top) × Π ∂(next)/∂(previous), with each local derivative
 *  read off the graph as the ratio of the two known gradients (scalars only, single-consumer links only). */
function chainRule(graph, id) {
  const byId = new Map(graph.nodes.map((n) => [n.id, n]));
  const node = byId.get(id);
  const scalar = (n) => typeof n.grad === "number";
  if (!scalar(node)) return null;
  const path = pathToRoot(graph, id);
  const known = path.map((i) => byId.get(i)).filter(scalar);
  if (known.length < 2) return null;
  const top = known[known.length - 1];
  const factors = [];
  for (let i = known.length - 1; i > 0; i--) {
    const upper = known[i], lower = known[i - 1];
    if (upper.grad === 0) return null;
    factors.push({ name: `∂${symbol(upper)}/∂${symbol(lower)}`, value: lower.grad / upper.grad });
  }
  const end = byId.get(path[path.length - 1]);
  return { node, top, factors, branch: end, branches: graph.edges.filter((e) => e.from === end.id).length };
}

function fact(list, term, value, title) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  if (title) dd.title = title;
  list.append(dt, dd);
}

function showNode(id) {
  const graph = state.graph;
  const node = graph.nodes.find((n) => n.id === id);
  for (const g of document.querySelectorAll("#graph g.node")) g.classList.remove("selected", "on-path");
  document.getElementById("node-" + id)?.classList.add("selected");
  const panel = $("#node");
  panel.hidden = false;
  $("#node-title").textContent = `${nodeName(node)} — ${node.op}`;
  const facts = $("#node-facts");
  facts.replaceChildren();
  const inputs = graph.edges.filter((e) => e.to === id).map((e) => nodeName(graph.nodes[e.from]));
  const uses = graph.edges.filter((e) => e.from === id).map((e) => nodeName(graph.nodes[e.to]));
  fact(facts, "node", `graph.nodes[${id}] in the JSON answer`);
  fact(facts, "kind", id === graph.root ? "root (the output backward() starts from)"
    : node.op === "AccumulateGrad" ? "leaf (an input with requires_grad=True)" : "operation");
  if (node.shape) fact(facts, "shape", JSON.stringify(node.shape));
  fact(facts, "value", node.value === null ? "not kept for this node" : fmt(node.value), exact(node.value));
  fact(facts, "grad dL/d(node)", node.grad === null ? "not kept for this node" : fmt(node.grad), exact(node.grad));
  if (inputs.length) fact(facts, "inputs", inputs.join(", "));
  if (uses.length) fact(facts, "used by", uses.join(", "));

  const chainBox = $("#node-chain");
  chainBox.replaceChildren();
  const chain = id === graph.root ? null : chainRule(graph, id);
  const p = document.createElement("p");
  p.className = "chain";
  if (id === graph.root) p.textContent = "dL/dL = 1: backward() starts here.";
  else if (!chain) {
    p.textContent = node.grad === null
      ? "This node's gradient is not shown: its tensor is larger than GRAPH_VALUE_MAX_ELEMENTS."
      : `dL/d${symbol(node)} = ${fmt(node.grad)}: it is used by ${uses.length} operations, ` +
        "and its gradient is the sum over them.";
  } else {
    for (const i of pathToRoot(graph, id)) document.getElementById("node-" + i)?.classList.add("on-path");
    const start = chain.top.id === graph.root ? "dL/dL" : `dL/d${symbol(chain.top)}`;
    const symbols = [start, ...chain.factors.map((f) => f.name)].join(" × ");
    const values = [fmt(chain.top.grad), ...chain.factors.map((f) => fmt(f.value))].join(" × ");
    p.textContent = `dL/d${symbol(node)} = ${symbols}\n    = ${values}\n    = ${fmt(node.grad)}`;
    if (chain.top.id !== graph.root) {
      p.textContent += `\n(Towards the loss the path forks at ${nodeName(chain.branch)}, ` +
        `used by ${chain.branches} operations, so ` +
        `dL/d${symbol(chain.top)} = ${fmt(chain.top.grad)} is the sum over those branches, read from the graph.)`;
    }
  }
  chainBox.append(p);
}

// ---------- check tab ----------------------------------------------------------------------------------------------

function answerField(id, label, errorId, placeholder) {
  const div = textField(id, label, errorId);
  div.querySelector("input").placeholder = placeholder;
  return div;
}

function renderAnswerFields() {
  const box = $("#answers");
  const old = {};
  for (const input of box.querySelectorAll("input")) old[input.id] = input.value;
  box.replaceChildren();
  for (const name of wrtNames()) {
    box.append(answerField(`answer-grad-${name}`, `dL/d${name} (a number)`, `err-submission.gradients.${name}`,
      "e.g. 6.6918"));
    box.append(answerField(`answer-formula-${name}`, `dL/d${name} as a formula`,
      `err-submission.gradient_formulas.${name}`, "e.g. 2*x"));
  }
  for (const input of box.querySelectorAll("input")) if (input.id in old) input.value = old[input.id];
}

function checkBody() {
  const submission = {};
  const loss = $("#answer-loss").value.trim();
  if (loss) submission.loss = parseValue(loss);
  for (const name of wrtNames()) {
    const grad = document.getElementById(`answer-grad-${name}`)?.value.trim();
    const formula = document.getElementById(`answer-formula-${name}`)?.value.trim();
    if (grad) (submission.gradients ??= {})[name] = parseValue(grad);
    if (formula) (submission.gradient_formulas ??= {})[name] = formula;
  }
  return { model: currentModel(), inputs: currentInputs(), submission,
           rtol: parseValue($("#rtol").value), atol: parseValue($("#atol").value) };
}

async function grade() {
  const body = checkBody();
  const round = state.checking = startRound(state.checking);
  showCurl("v1/check", body);
  setStatus("check-status", "grading…");
  const box = $("#verdicts");
  const failed = (message) => {
    clearErrors();
    box.replaceChildren();   // no verdicts of an earlier answer next to the new one
    setStatus("check-status", "failed");
    mark($("#err-check"), message);
  };
  let answer;
  try {
    answer = await post("v1/check", body, "application/json", round.signal);
  } catch (err) {
    if (state.checking !== round) return;   // replaced by a newer request: that one reports
    round.finish();
    failed(noAnswer(err, round));
    return;
  }
  round.finish();
  if (state.checking !== round) return;
  if (answer.badJson !== undefined || (answer.ok && !answer.json)) { failed(notJson(answer)); return; }
  clearErrors();
  box.replaceChildren();
  setStatus("check-status", answer.ok ? "graded" : `error ${answer.status}`);
  if (!answer.ok) { showProblem(answer.json || { title: "HTTP", detail: String(answer.status) }, "err-check"); return; }
  const result = answer.json;
  const score = document.createElement("p");
  score.className = "score";
  score.textContent = `Score ${fmt(result.score)} / ${fmt(result.max_score)} — ${result.summary}`;
  box.append(score);
  for (const check of result.checks) {
    const div = document.createElement("div");
    div.className = "verdict " + (check.passed ? "passed" : "failed");
    div.dataset.check = check.name;
    const h = document.createElement("h3");
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.textContent = check.passed ? "✓ passed" : "✗ failed";
    h.append(badge, ` ${check.title} (${fmt(check.points)} / ${fmt(check.max_points)})`);
    const msg = document.createElement("p");
    msg.className = "message";
    msg.textContent = check.message;
    div.append(h, msg);
    box.append(div);
  }
}

// ---------- URL state ----------------------------------------------------------------------------------------------

// The longest address the page writes.  Servers refuse longer request lines (gunicorn at 4094 bytes, the gateway's
// nginx at 4 KiB: a raw 414 on reload, the state lost), and links pass through mail, chat and LMS editors that cut
// or refuse long ones; 2000 characters is the usual safe bound and leaves room for a gateway prefix.
const MAX_URL_LENGTH = 2000;

/** The page's state as a query string: ?formula=sin(x**2)&x=3 or ?model=neuron&x=6.7&y=0&w=1&b=0 (README).
 *  A state whose address would be longer than MAX_URL_LENGTH is not written: the address bar keeps the last
 *  state that fitted, and a notice says so. */
function saveUrl() {
  const q = new URLSearchParams();
  const k = kind();
  if (k === "neuron") {
    q.set("model", "neuron");
    if ($("#loss").value !== "bce") q.set("loss", $("#loss").value);
    if ($("#reduction").value !== "mean") q.set("reduction", $("#reduction").value);
  } else if (k === "name") q.set("name", $("#name").value);
  else q.set("formula", $("#formula").value);
  for (const [name, text] of Object.entries(currentInputsText())) if (!RESERVED.has(name)) q.set(name, text.trim());
  if ($("#mode").value !== "grad") q.set("mode", $("#mode").value);
  if ($("#dtype").value !== "float32") q.set("dtype", $("#dtype").value);
  if (!$("#panel-check").hidden) q.set("tab", "check");
  const search = "?" + q.toString();
  const length = new URL(search, location.href).href.length;
  const note = $("#url-note");
  note.hidden = length <= MAX_URL_LENGTH;
  if (length > MAX_URL_LENGTH) {
    note.textContent = `These inputs are too large for a link: the address would be ${length} characters, and ` +
      `the page writes at most ${MAX_URL_LENGTH} (servers refuse much longer ones, so a reload would fail). ` +
      "The address bar keeps the last state that fitted; to share or keep this one, copy the curl command below.";
    return;
  }
  note.textContent = "";
  history.replaceState(null, "", search);
}

/** Set a select to a link's value.  One it does not offer (an unknown catalog entry, a catalog that did not load,
 *  ?mode=bogus) is added as an option marked "(from the link; …)": the request carries it, so the service's own
 *  message appears next to the field, and the address keeps it instead of an empty value. */
function selectFromUrl(select, value, why) {
  if (![...select.options].some((o) => o.value === value)) {
    const option = new Option(`${value} (from the link; ${why})`, value);
    option.className = "from-link";
    select.append(option);
  }
  select.value = value;
}

/** Once a real choice is made, the link's unknown value leaves the list. */
function dropLinkOptions(select) {
  for (const option of select.querySelectorAll("option.from-link")) if (!option.selected) option.remove();
}

function loadUrl() {
  const q = new URLSearchParams(location.search);
  const values = {};
  for (const [key, value] of q) if (!RESERVED.has(key)) values[key] = value;
  let k = "neuron";
  if (q.has("formula")) { k = "formula"; $("#formula").value = q.get("formula"); }
  else if (q.has("name") || (q.has("model") && q.get("model") !== "neuron")) {
    k = "name";
    const name = q.get("name") || q.get("model");
    selectFromUrl($("#name"), name, state.catalogError ? "the catalog could not be loaded" : "not in the catalog");
  }
  document.querySelector(`input[name=kind][value=${k}]`).checked = true;
  for (const key of ["loss", "reduction", "mode", "dtype"]) {
    if (q.has(key)) selectFromUrl($("#" + key), q.get(key), "not a valid choice");
  }
  $("#inputs").replaceChildren();
  syncInputs(values);
  selectTab(q.get("tab") === "check" ? "check" : "compute", false);
}

// ---------- tabs and wiring ----------------------------------------------------------------------------------------

function selectTab(which, save = true) {
  for (const t of ["compute", "check"]) {
    const tab = $("#tab-" + t);
    const on = t === which;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    $("#panel-" + t).hidden = !on;
  }
  $("fieldset.options").hidden = which === "check";  // v1/check grades against autograd in float64, grad mode
  if (save) saveUrl();
}

function setFit(on) {
  $("#fit").setAttribute("aria-pressed", String(on));
  $("#graph").classList.toggle("fit", on);
}

async function loadCatalog() {
  try {   // on failure the catalog choice stays empty (with a notice); neuron and formula still work
    const response = await fetch("v1/models", { headers: { Accept: "application/json" } });
    if (response.ok) state.catalog = (await response.json()).expressions;
    else state.catalogError = `HTTP ${response.status}`;
  } catch (err) {
    state.catalogError = err.message;
  }
  $("#name").replaceChildren(...state.catalog.map((e) => new Option(e.name, e.name)));
}

async function main() {
  await loadCatalog();
  loadUrl();
  $("#request").addEventListener("submit", (ev) => { ev.preventDefault(); compute(); });
  $("#check").addEventListener("submit", (ev) => { ev.preventDefault(); grade(); });
  for (const radio of document.querySelectorAll("input[name=kind]")) {
    radio.addEventListener("change", () => { $("#inputs").replaceChildren(); syncInputs(); compute(); });
  }
  $("#name").addEventListener("change", () => { dropLinkOptions($("#name")); syncInputs(); compute(); });
  $("#formula").addEventListener("input", () => { syncInputs(); scheduleCompute(); });
  for (const id of ["#loss", "#reduction", "#mode", "#dtype"]) {
    $(id).addEventListener("change", () => { dropLinkOptions($(id)); compute(); });
  }
  setFit(window.innerWidth >= 900);   // whole graph on a laptop or projector; actual size (scrolling) on a phone
  $("#fit").addEventListener("click", () => setFit($("#fit").getAttribute("aria-pressed") !== "true"));
  $("#copy").addEventListener("click", async () => {
    $("#curl").select();
    try { await navigator.clipboard.writeText($("#curl").value); } catch (err) { document.execCommand("copy"); }
  });
  const tabs = [$("#tab-compute"), $("#tab-check")];
  for (const [i, tab] of tabs.entries()) {
    tab.addEventListener("click", () => selectTab(i === 0 ? "compute" : "check"));
    tab.addEventListener("keydown", (ev) => {   // WAI-ARIA tabs: arrow keys move between tabs
      if (ev.key !== "ArrowRight" && ev.key !== "ArrowLeft") return;
      const next = tabs[(i + 1) % 2];
      selectTab(next === tabs[0] ? "compute" : "check");
      next.focus();
    });
  }
  await compute();
}

main();
