"use strict";
// The page for one or several images: upload, then per image its state ("assessed", "not
// assessed", "unreadable"), label and probability, or the reasons it was not assessed, and a
// heatmap of the assessed ones. One page, two ways to score: through the server's API
// (`pneumonia-cxr serve`), or inside the browser (static/browser.js) in the folder
// `pneumonia-cxr web` writes (data-mode="browser"); both give the service's result JSON.
const $ = (id) => document.getElementById(id);
let browserMode = false;
// The model's answers (`model.outputs`: model.json's or /v1/model's `outputs`), in order; the
// first is P(PNEUMONIA). Every answer after it is computed, worded and drawn from its entry, so
// a model with one more answer shows it with no edit here.
let answers = [];
const percent = (value) => (value == null ? "n/a" : (100 * value).toFixed(1) + "%");

// A class of an answer after the first is said ("likely viral (81.0%)") only when that class's
// own probability is at least 50% and the answer's probability is at least this far from its
// threshold; else "<answer> uncertain" ("type uncertain").
const MARGIN = 0.05;

// A server reachable from the network needs its access token: asked once, kept for this tab.
const TOKEN_KEY = "pneumonia-cxr-token";
async function api(url, options = {}) {
  for (let attempt = 0; attempt < 3; attempt++) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const response = await fetch(url, { ...options, headers });
    if (response.status !== 401) return response;
    const given = window.prompt("This server needs its access token:");
    if (!given) return response;
    sessionStorage.setItem(TOKEN_KEY, given.trim());
  }
  return fetch(url, options);
}

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = src;
    script.onload = resolve;
    script.onerror = () => reject(new Error(`a file of this page (${src}) could not be loaded; reload the page`));
    document.head.append(script);
  });
}

// What the server or the browser said, in words a clinician reads: no class names, no program
// options or commands, no quoted bytes or library messages (the advice that remains says what
// to do in words).
const TECHNICAL = /`|(?:^|\s)--[a-z]|\bmax_[a-z_]+|\bpip install\b/;
function plainError(text) {
  let words = String(text || "").trim();
  words = words.replace(/^(?:[A-Za-z_.]*(?:Error|Exception)\b:?\s*)+/, "");
  for (let before = ""; before !== words;) { // technical parentheses, innermost first
    before = words;
    words = words.replace(/\s*\(([^()]*)\)/g,
      (all, inside) => (/[`'"=:<>{}[\]\\]|Error|Exception/.test(inside) ? "" : all));
  }
  words = words.split(/;\s*/).map((clause) => {
    if (!TECHNICAL.test(clause)) return clause;
    return clause.split(/,?\s+or\s+/).filter((part) => !TECHNICAL.test(part)).join(" or ");
  }).filter((clause) => clause.trim()).join("; ");
  return words.replace(/\s+/g, " ").replace(/\s+([;,.])/g, "$1").trim();
}

// An answer after the first in words, and its numbers for "details" (its question, e.g.
// "P(VIRAL | PNEUMONIA) = 81.0%; type threshold 46.5%"). `label`, the class the page was sent,
// names the class where the entry lacks class names.
function answerWords(p, threshold, answer = answers[1], label = "") {
  const positive = p >= threshold;
  const share = positive ? p : 1 - p;
  const certain = share >= 0.5 && Math.abs(p - threshold) >= MARGIN;
  const numbers = `${answer.question} = ${percent(p)}; ${answer.name} threshold ${percent(threshold)}`;
  const named = answer.class_names ? answer.class_names[positive ? 1 : 0] : label;
  if (certain) return { certain, text: `likely ${named.toLowerCase()} (${percent(share)})`, numbers };
  const why = share < 0.5 ? `neither ${answer.name} reaches 50%`
    : `too close to the ${answer.name} threshold to tell`;
  return { certain, text: `${answer.name} uncertain`, numbers: `${numbers}: ${why}.` };
}


// The static folder: the model loads in this tab (progress shown), then scores here only.
async function startInBrowser() {
  browserMode = true;
  $("privacy").textContent = "Images are analysed inside this browser and never leave this device.";
  const manifest = document.createElement("link");
  manifest.rel = "manifest";
  manifest.href = "manifest.webmanifest";
  document.head.append(manifest);
  if ("serviceWorker" in navigator) navigator.serviceWorker.register("sw.js").catch(() => {});
  try {
    await loadScript("static/browser.js");
    const info = await BrowserScorer.load((share) => {
      $("model").textContent = `Loading the model… ${percent(share)}`;
    });
    describeModel(info.model, info.outputs);
    document.body.dataset.ready = "true";
  } catch (error) {
    modelUnavailable(error.message);
  }
}

function modelUnavailable(detail) {
  $("model").textContent = `The model is not available: ${plainError(detail)}`;
  $("model").className = "model error";
  $("model").dataset.testid = "error";
}

function describeModel(model, outputs = null) {
  answers = outputs || model.outputs; // both list `model.outputs.output_entries`
  const classes = (answer) => answer.class_names.map((name) => name.toLowerCase()).join(" or ");
  const more = answers.slice(1).map((answer) => "whether " +
    `${answer.asks_given ? `a ${answer.asks_given[1].toLowerCase()}` : "an image"} looks ${classes(answer)}`);
  const metrics = model.test_metrics;
  const figures = metrics
    ? ` Test split (${metrics.n} images): AUC ${metrics.roc_auc.toFixed(3)}, accuracy ` +
      `${percent(metrics.accuracy)}, sensitivity ${percent(metrics.sensitivity)}, ` +
      `specificity ${percent(metrics.specificity)}.`
    : "";
  const where = model.calibration_line
    ? `${model.calibration_line}; its figures are the site's, not the test split's`
    : "chosen on validation data";
  $("model").textContent =
    `Model: ${model.backbone}${model.shipped ? " (shipped with pneumonia-cxr)" : ""}; ` +
    `PNEUMONIA when P ≥ ${percent(model.threshold)} (${where}).` + figures +
    (more.length ? ` It also says ${more.join(", and ")}.` : "");
  $("scope").textContent = model.scope; // from the model's intended-use record
  if (model.site_verdict) {
    const how = model.calibration && model.calibration.adapted ? "adapted" : "calibrated";
    $("verdict").textContent = `At the site it was ${how} on: ${model.site_verdict.text}.`;
    $("verdict").className = model.site_verdict.useful ? "verdict" : "verdict warning";
  }
  if (answers.length > 1) { // the second toggle: the heatmap of the answer after the first
    const words = $("type-toggle").lastChild;
    if (words.nodeType === Node.TEXT_NODE) {
      words.textContent = ` Heatmap of the ${answers[1].name} (${classes(answers[1])})`;
    }
    $("type-toggle").classList.remove("off");
    $("type-heatmaps").disabled = false;
  }
}

async function showModel() {
  for (let attempt = 0; attempt < 60; attempt++) {
    const response = await api("/v1/model");
    if (response.ok) {
      describeModel(await response.json());
      return;
    }
    const body = await response.json().catch(() => ({}));
    if (response.status !== 503 || body.detail && !body.detail.includes("loading")) {
      modelUnavailable(body.detail || `the server answered ${response.status}`);
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

// Which picture a card shows: the second answer's heatmap (second toggle: the type's), the
// pneumonia heatmap, or the image itself (with heatmaps off, and always for an image that was
// not assessed).
function shownImage(original, overlay, typeOverlay) {
  if (!$("heatmaps").checked) return { source: original, kind: "image" };
  if ($("type-heatmaps").checked && typeOverlay) return { source: typeOverlay, kind: "type-heatmap" };
  if (overlay) return { source: overlay, kind: "heatmap" };
  return { source: original, kind: "image" };
}

function paint(image) {
  const { original, overlay, typeOverlay } = image.dataset;
  const { source, kind } = shownImage(original, overlay, typeOverlay);
  image.dataset.kind = kind;
  if (source) image.src = source; else image.removeAttribute("src");
  image.style.visibility = source ? "visible" : "hidden";
}

const pngData = (base64) => (base64 ? `data:image/png;base64,${base64}` : "");
const element = (tag, { dataset = {}, ...props } = {}, ...children) => {
  const node = Object.assign(document.createElement(tag), props);
  Object.assign(node.dataset, dataset);
  node.append(...children);
  return node;
};

function stateOf(result) {
  return result.error ? "unreadable" : result.state || "assessed";
}

function card(result, file) {
  const state = stateOf(result);
  const article = element("article", { className: `card state-${state.replace(" ", "-")}`,
    dataset: { testid: "result", state } });
  article.append(element("div", { className: "name", textContent: result.name }));
  if (state === "unreadable") {
    article.append(element("p", { className: "error", dataset: { testid: "error" },
      textContent: `Could not read this image: ${plainError(result.error)}` }));
    return article;
  }
  // The picture: a DICOM's decoded image (a browser cannot show DICOM), else the file itself.
  const isDicom = Boolean(result.preview_png_base64) || /\.(dcm|dicom)$/i.test(result.name);
  const original = result.preview_png_base64 ? pngData(result.preview_png_base64)
    : file && !isDicom ? URL.createObjectURL(file) : "";
  const assessed = state === "assessed"; // a heatmap on a refused image would look like a finding
  const [first, ...more] = answers;
  const image = element("img", { alt: `X-ray ${result.name}` });
  image.dataset.original = original;
  image.dataset.overlay = assessed ? pngData(result[first.heatmap_key]) : "";
  image.dataset.typeOverlay = assessed && more.length ? pngData(result[more[0].heatmap_key]) : "";
  if (assessed && result.cam) image.dataset.cam = JSON.stringify(result.cam); // the map (tests)
  paint(image);
  article.append(image);
  if (!assessed) {
    article.append(notAssessed(result));
    return article;
  }
  const probability = element("span", { textContent: percent(result.probability),
    dataset: { testid: "probability", value: String(result.probability) } });
  article.append(element("p", { className: "verdict" },
    element("span", { className: `label-${result.label}`, textContent: result.label,
      dataset: { testid: "label" } }),
    " — P(PNEUMONIA) = ", probability, ` (threshold ${percent(result.threshold)})`));
  // Each further answer where it was given (the type: for a film called PNEUMONIA), in words,
  // its numbers under details; marked by its label column (the type's: "pneumonia-type").
  for (const answer of more) {
    const label = result[answer.label_column];
    if (!label) continue;
    const said = answerWords(result[answer.probability_column], result.thresholds[answer.name],
      answer, label);
    const testid = answer.label_column.replace(/_/g, "-");
    const line = element("p", { className: "type" }, element("span", { textContent: said.text,
      dataset: { testid, answer: answer.name, certain: String(said.certain) } }));
    article.append(line, element("details", {}, element("summary", { textContent: "details" }),
      element("p", { textContent: said.numbers })));
  }
  return article;
}

// No label, no heatmap: the reasons in words, each once; the figures and the network's numbers
// folded away under "details".
function notAssessed(result) {
  const box = element("div", { className: "not-assessed" });
  box.append(element("p", { className: "verdict" }, element("span", { className: "label-none",
    textContent: "not assessed", dataset: { testid: "state" } }),
  " — the model gives no answer for this image, because:"));
  const reasons = result.reasons && result.reasons.length ? result.reasons
    : ["it does not look like the chest X-rays the model was made for"];
  box.append(element("ul", {}, ...reasons.map((reason) => element("li", { textContent: reason,
    dataset: { testid: "reason" } }))));
  const numbers = [];
  if (result.unassessed_probability != null) {
    numbers.push(element("li", {}, "P(PNEUMONIA) = ", element("span", {
      textContent: percent(result.unassessed_probability),
      dataset: { testid: "unassessed-probability", value: String(result.unassessed_probability) },
    }), ` (threshold ${percent(result.threshold)}): not a decision for such an image`));
  }
  for (const answer of answers.slice(1)) {
    const number = result[answer.unassessed_column];
    if (number == null) continue;
    numbers.push(element("li", { textContent: `${answer.question} = ${percent(number)}: ` +
      "not a decision either" }));
  }
  const figures = (result.details || []).map((detail) => element("li", { textContent: detail }));
  box.append(element("details", { dataset: { testid: "details" } },
    element("summary", { textContent: "details" }), element("ul", {}, ...figures, ...numbers)));
  return box;
}

// After a batch: how many were assessed, not assessed, unreadable, and how long it took.
function summarize(results, started, failed = 0) {
  const count = (state) => results.filter((r) => stateOf(r) === state).length;
  const errors = count("unreadable") + failed;
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  const summary = $("summary");
  summary.textContent = `${count("assessed")} assessed, ${count("not assessed")} not assessed, ` +
    `${errors} ${errors === 1 ? "error" : "errors"}; ${seconds} s.`;
  Object.assign(summary.dataset, { assessed: count("assessed"), notAssessed: count("not assessed"),
    errors, seconds });
  window.PneumoniaPage.lastResults = results; // the result JSON behind the cards (tests)
  document.body.dataset.scored = String(Number(document.body.dataset.scored || 0) + 1);
}

function startBatch(count, where) {
  $("results").replaceChildren();
  $("summary").textContent = "";
  $("status").textContent = `Analysing ${count} image(s)${where}…`;
  return performance.now();
}

// In the browser: one image after the other, each card shown as soon as it is scored.
async function scoreHere(files) {
  if (!browserReady()) return;
  const all = [...files];
  const started = startBatch(all.length, " in this browser");
  const results = await BrowserScorer.score(all, (result, done) => {
    $("results").append(card(result, all[done - 1]));
    $("status").textContent = done < all.length ? `Analysed ${done} of ${all.length}…` : "";
  });
  summarize(results, started);
}

function browserReady() {
  if (document.body.dataset.ready === "true") return true;
  $("status").textContent = "The model is still loading (or failed to load); try again in a moment.";
  return false;
}

// A request the server refused as a whole, in words, with what to do.
function requestError(status, body) {
  if (status === 401) return "This server needs its access token; reload the page and enter it.";
  if (status === 503) return "The server is busy or still loading the model; try again in a moment.";
  if (status >= 500) return "The server failed on this request; try again, and tell whoever runs it if it keeps failing.";
  const detail = plainError(body.detail || body.error || `the server answered ${status}`);
  return status === 413 ? `${detail}; send fewer or smaller files at a time.` : detail;
}

function showError(text) {
  $("status").replaceChildren(element("span", { className: "error", textContent: text,
    dataset: { testid: "error" } }));
}

async function upload(files) {
  if (!files.length) return;
  if (browserMode) return scoreHere(files); // never falls through to the server's API
  const form = new FormData();
  for (const file of files) form.append("file", file, file.name);
  const started = startBatch(files.length, "");
  let response;
  let body;
  try {
    response = await api("/v1/predict?gradcam=true", { method: "POST", body: form });
    body = await response.json().catch(() => ({}));
  } catch (error) {
    showError("The server could not be reached; check that it is running and reload the page.");
    summarize([], started, files.length);
    return;
  }
  const results = body.results || [];
  if (!results.length) {
    showError(response.ok ? "The server sent no results; try again." : requestError(response.status, body));
    summarize([], started, files.length);
    return;
  }
  $("status").textContent = "";
  const byName = new Map([...files].map((file) => [file.name, file]));
  for (const result of results) $("results").append(card(result, byName.get(result.name)));
  summarize(results, started);
}

$("file").addEventListener("change", (event) => upload(event.target.files));
function repaint() {
  for (const image of document.querySelectorAll(".card img")) paint(image);
  $("legend").classList.toggle("off", !$("heatmaps").checked);
}
$("heatmaps").addEventListener("change", repaint);
$("type-heatmaps").addEventListener("change", repaint);
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  upload(event.dataTransfer.files);
});
// The wording rules, for the browser tests (`typeWords`: the second answer's, by its old name).
window.PneumoniaPage = { plainError, answerWords, typeWords: (p, threshold) => answerWords(p, threshold) };
// `pneumonia-cxr web` marks its copy of the page (<body data-mode="browser">): no network probe
// decides, so a failure can never turn the static page into one that uploads images.
if (document.body.dataset.mode === "browser") startInBrowser(); else showModel();
