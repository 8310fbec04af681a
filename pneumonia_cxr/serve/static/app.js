"use strict";
// The page for one or several images: upload, show probability, label, OOD warning, heatmap.
// One page, two ways to score: through the server's API (`pneumonia-cxr serve`), or inside the
// browser (static/browser.js) in the folder `pneumonia-cxr web` writes (data-mode="browser").
const $ = (id) => document.getElementById(id);
let browserMode = false;
const percent = (value) => (value == null ? "n/a" : (100 * value).toFixed(1) + "%");

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
    script.onerror = () => reject(new Error(`${src} could not be loaded`));
    document.head.append(script);
  });
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
    describeModel(info.model);
    document.body.dataset.ready = "true";
  } catch (error) {
    $("model").textContent = `The model is not available: ${error.message}`;
    $("model").className = "model error";
    $("model").dataset.testid = "error";
  }
}

function describeModel(model) {
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
    (model.type ? " It also says whether a pneumonia looks bacterial or viral." : "");
  $("scope").textContent = model.scope;
  if (model.site_verdict) {
    $("verdict").textContent = `At the site it was calibrated on: ${model.site_verdict.text}.`;
    $("verdict").className = model.site_verdict.useful ? "verdict" : "verdict warning";
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
      $("model").textContent = `The model is not available: ${body.detail || response.status}`;
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

// Which picture a card shows: the type's heatmap (second toggle), the pneumonia heatmap, or
// the image itself.
function shownImage(original, overlay, typeOverlay) {
  if (!$("heatmaps").checked) return original || overlay;
  if ($("type-heatmaps").checked && typeOverlay) return typeOverlay;
  return overlay || original;
}

function card(result, file) {
  const element = document.createElement("article");
  element.className = "card";
  element.dataset.testid = "result";
  const name = document.createElement("div");
  name.className = "name";
  name.textContent = result.name;
  element.append(name);
  if (result.error) {
    const error = document.createElement("p");
    error.className = "error";
    error.dataset.testid = "error";
    error.textContent = `Could not read this image: ${result.error}`;
    element.append(error);
    return element;
  }
  const image = document.createElement("img");
  const original = /\.(jpe?g|png)$/i.test(file.name) ? URL.createObjectURL(file) : null;
  const overlay = result.gradcam_png_base64
    ? `data:image/png;base64,${result.gradcam_png_base64}` : null;
  const typeOverlay = result.gradcam_type_png_base64
    ? `data:image/png;base64,${result.gradcam_type_png_base64}` : null;
  if (typeOverlay) $("type-toggle").hidden = false;
  const pick = () => shownImage(original, overlay, typeOverlay);
  image.alt = `X-ray ${result.name}`;
  const source = pick();
  if (source) image.src = source;
  image.dataset.original = original || "";
  image.dataset.overlay = overlay || "";
  image.dataset.typeOverlay = typeOverlay || "";
  if (result.cam) image.dataset.cam = JSON.stringify(result.cam); // the map itself (tests)
  element.append(image);
  const verdict = document.createElement("p");
  const probability = document.createElement("span");
  probability.dataset.testid = "probability";
  probability.dataset.value = String(result.probability);
  probability.textContent = percent(result.probability);
  if (result.out_of_distribution) {
    // No label for an image the model was not made for: a grey "not assessed", the number hidden.
    verdict.innerHTML = `<span class="label-none" data-testid="label">not assessed</span>: `;
    const reason = document.createElement("span");
    reason.dataset.testid = "reason";
    reason.textContent = result.reason ||
      "this does not look like a pediatric chest X-ray the model was made for";
    verdict.append(reason, ".");
    const details = document.createElement("details");
    details.innerHTML = "<summary>details</summary>";
    const line = document.createElement("p");
    line.append("P(PNEUMONIA) = ", probability, ` (threshold ${percent(result.threshold)}); ` +
      "meaningless for such an image.");
    details.append(line);
    element.append(verdict, details);
    return element;
  }
  verdict.innerHTML =
    `<span class="label-${result.label}" data-testid="label"></span> — P(PNEUMONIA) = `;
  verdict.querySelector("[data-testid=label]").textContent = result.label;
  verdict.append(probability, ` (threshold ${percent(result.threshold)})`);
  element.append(verdict);
  if (result.pneumonia_type) {
    // "likely bacterial, 81%": the type head's probability of the type it names.
    const kind = document.createElement("p");
    kind.dataset.testid = "pneumonia-type";
    const share = result.pneumonia_type === "VIRAL" ? result.p_viral : 1 - result.p_viral;
    kind.textContent = `likely ${result.pneumonia_type.toLowerCase()}, ${percent(share)}`;
    element.append(kind);
  }
  return element;
}

// In the browser: one image after the other, each card shown as soon as it is scored.
async function scoreHere(files) {
  if (!browserReady()) return;
  $("results").replaceChildren();
  const all = [...files];
  $("status").textContent = `Analysing ${all.length} image(s) in this browser…`;
  await BrowserScorer.score(all, (result, done) => {
    $("results").append(card(result, all[done - 1]));
    $("status").textContent = done < all.length ? `Analysed ${done} of ${all.length}…` : "";
  });
  document.body.dataset.scored = String(Number(document.body.dataset.scored || 0) + 1);
}

function browserReady() {
  if (document.body.dataset.ready === "true") return true;
  $("status").textContent = "The model is still loading (or failed to load); try again in a moment.";
  return false;
}

async function upload(files) {
  if (!files.length) return;
  if (browserMode) return scoreHere(files); // never falls through to the server's API
  const form = new FormData();
  for (const file of files) form.append("file", file, file.name);
  $("status").textContent = `Analysing ${files.length} image(s)…`;
  $("results").replaceChildren();
  try {
    const response = await api("/v1/predict?gradcam=true", { method: "POST", body: form });
    const body = await response.json();
    const byName = new Map([...files].map((file) => [file.name, file]));
    const results = body.results || [];
    if (!response.ok && !results.length) {
      $("status").innerHTML = "";
      const error = document.createElement("span");
      error.className = "error";
      error.dataset.testid = "error";
      error.textContent = `Error: ${body.error}. ${body.detail}`;
      $("status").append(error);
      return;
    }
    $("status").textContent = response.ok ? "" : `Error: ${body.error}.`;
    for (const result of results) $("results").append(card(result, byName.get(result.name) || files[0]));
  } catch (error) {
    $("status").textContent = `The server could not be reached: ${error}`;
  }
}

$("file").addEventListener("change", (event) => upload(event.target.files));
function repaint() {
  for (const image of document.querySelectorAll(".card img")) {
    const { original, overlay, typeOverlay } = image.dataset;
    const source = shownImage(original, overlay, typeOverlay);
    if (source) image.src = source;
  }
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
// `pneumonia-cxr web` marks its copy of the page (<body data-mode="browser">): no network probe
// decides, so a failure can never turn the static page into one that uploads images.
if (document.body.dataset.mode === "browser") startInBrowser(); else showModel();
