"use strict";
// The page for one or several images: upload, show probability, label, OOD warning, heatmap.
const $ = (id) => document.getElementById(id);
const percent = (value) => (value == null ? "n/a" : (100 * value).toFixed(1) + "%");

async function showModel() {
  for (let attempt = 0; attempt < 60; attempt++) {
    const response = await fetch("/v1/model");
    if (response.ok) {
      const model = await response.json();
      const metrics = model.test_metrics;
      const figures = metrics
        ? ` Test split (${metrics.n} images): AUC ${metrics.roc_auc.toFixed(3)}, accuracy ` +
          `${percent(metrics.accuracy)}, sensitivity ${percent(metrics.sensitivity)}, ` +
          `specificity ${percent(metrics.specificity)}.`
        : "";
      $("model").textContent =
        `Model: ${model.backbone}${model.shipped ? " (shipped with pneumonia-cxr)" : ""}; ` +
        `PNEUMONIA when P ≥ ${model.threshold.toFixed(3)} (chosen on validation data).` + figures;
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
  const pick = () => ($("heatmaps").checked && overlay ? overlay : original || overlay);
  image.alt = `X-ray ${result.name}`;
  const source = pick();
  if (source) image.src = source;
  image.dataset.original = original || "";
  image.dataset.overlay = overlay || "";
  element.append(image);
  const verdict = document.createElement("p");
  verdict.innerHTML =
    `<span class="label-${result.label}" data-testid="label"></span> — ` +
    `P(PNEUMONIA) = <span data-testid="probability"></span> (threshold ` +
    `${result.threshold.toFixed(3)})`;
  verdict.querySelector("[data-testid=label]").textContent = result.label;
  verdict.querySelector("[data-testid=probability]").textContent = result.probability.toFixed(6);
  element.append(verdict);
  if (result.out_of_distribution) {
    const warning = document.createElement("p");
    warning.className = "ood";
    warning.dataset.testid = "ood";
    warning.textContent =
      "This image does not look like the pediatric chest X-rays the model was trained on " +
      `(out-of-distribution score ${result.ood_score.toFixed(1)}): do not trust this label.`;
    element.append(warning);
  }
  return element;
}

async function upload(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const file of files) form.append("file", file, file.name);
  $("status").textContent = `Analysing ${files.length} image(s)…`;
  $("results").replaceChildren();
  try {
    const response = await fetch("/v1/predict?gradcam=true", { method: "POST", body: form });
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
$("heatmaps").addEventListener("change", () => {
  for (const image of document.querySelectorAll(".card img")) {
    const { original, overlay } = image.dataset;
    image.src = ($("heatmaps").checked && overlay) ? overlay : (original || overlay);
  }
});
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  upload(event.dataTransfer.files);
});
showModel();
