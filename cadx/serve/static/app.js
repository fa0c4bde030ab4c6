// cadx web page: pick a model, upload, show the result. Plain JS, no outside resources.
"use strict";

const $ = (id) => document.getElementById(id);
let models = [];
let limits = null;

function authHeaders() {
  const token = $("token").value.trim() || sessionStorage.getItem("cadx-token");
  return token ? { Authorization: "Bearer " + token } : {};
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function clearMessages() {
  $("error").hidden = true;
  $("status").textContent = "";
}

async function readError(response) {
  try {
    const body = await response.json();
    if (body && body.error) return body.error;
  } catch (e) { /* not JSON */ }
  return "HTTP " + response.status + " " + response.statusText;
}

// One input per column of the model's fusion model (GET /v1/models: fusion.columns); each
// value filled in is sent as a `clinical` form field NAME=VALUE.
function showClinicalFields(fusion) {
  $("clinical-row").hidden = !fusion;
  const fields = $("clinical-fields");
  fields.replaceChildren();
  if (!fusion) return;
  for (const column of fusion.columns) {
    const row = document.createElement("div");
    row.className = "row";
    const id = "clinical-" + column.name.replace(/[^A-Za-z0-9_-]/g, "_");
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = column.name + (column.unit ? " (" + column.unit + ")" : "");
    let input;
    if (column.kind === "categorical") {
      input = document.createElement("select");
      input.append(new Option("(not given)", ""),
        ...column.values.map((value) => new Option(value, value)));
    } else {
      input = document.createElement("input");
      input.type = "text";
      input.inputMode = "decimal";
      const [low, high] = column.range || [null, null];
      const hints = [];
      if (low !== null || high !== null) {
        hints.push((low !== null ? low : "") + " to " + (high !== null ? high : ""));
      }
      if (column.units.length) hints.push("or in " + column.units.join(", "));
      input.placeholder = hints.join("; ");
    }
    input.id = id;
    input.dataset.column = column.name;
    row.append(label, input);
    fields.append(row);
  }
  $("clinical-hint").textContent = "Fused with the image score: " + fusion.model +
    ". With a value left blank the image-only score is given, with the reason.";
}

function modelChanged() {
  const model = models.find((m) => m.id === $("model").value);
  if (!model) return;
  $("mask-row").hidden = model.kind !== "ct-patch";
  $("mask-hint").textContent = model.needs_organ_mask
    ? "Required, unless the zip above holds a file named *mask* or a DICOM SEG."
    : "Optional: this model segments the organ itself.";
  showClinicalFields(model.fusion);
  $("model-hint").textContent = model.kind + (model.organ ? " (" + model.organ + ")" : "") +
    ": upload " + model.accepts + "; decision threshold " + model.threshold.toFixed(3);
}

async function loadModels() {
  const response = await fetch("/v1/models", { headers: authHeaders() });
  if (response.status === 401) {
    $("token-row").hidden = false;
    showError("This service needs an access token: enter it above.");
    return;
  }
  if (!response.ok) { showError(await readError(response)); return; }
  const body = await response.json();
  models = body.models;
  limits = body.limits;
  $("model").replaceChildren(...models.map((m) => new Option(m.id + " - " + m.name, m.id)));
  $("fna-rule").textContent = "FNA advice (thyroid models): " + body.fna_rule.rule +
    ". Source: " + body.fna_rule.source + ".";
  modelChanged();
  clearMessages();
}

function checkSizes(files) {
  if (!limits) return null;
  if (files.length > limits.max_files) return "at most " + limits.max_files + " files";
  const total = files.reduce((sum, f) => sum + f.size, 0);
  if (total > limits.max_request_bytes) {
    return "the upload is " + (total / 2 ** 20).toFixed(1) + " MiB; the limit is " +
      (limits.max_request_bytes / 2 ** 20).toFixed(0) + " MiB";
  }
  return null;
}

function renderFusion(fusion) {
  $("score-label").textContent = fusion ? "image-only score" : "score";
  $("fusion").hidden = !fusion;
  if (!fusion) return;
  const fused = fusion.score !== null;
  const head = $("fusion-decision");
  head.textContent = fused ? "Image + " + fusion.columns.join(", ") + ": " + fusion.decision
    : "Fused score not given";
  head.className = fused ? (fusion.score > fusion.threshold ? "positive" : "negative") : "";
  $("fusion-score").textContent = fused ? fusion.score.toFixed(3) : fusion.not_fused;
  $("fusion-threshold").textContent = fusion.threshold.toFixed(3) +
    " (positive when fused score > threshold)";
  $("fusion-values").textContent = fusion.columns.map((column) => {
    const value = fusion.values[column];
    const unit = fusion.units[column];
    return column + " " + (value === null ? "not given" : value + (unit ? " " + unit : ""));
  }).join(", ");
  $("fusion-model").textContent = fusion.model;
}

function render(result) {
  const decision = $("decision");
  decision.textContent = result.decision;
  const scored = result.score !== null;
  decision.className = scored ? (result.positive ? "positive" : "negative") : "";
  $("score").textContent = scored ? result.score.toFixed(3) : "none: nothing was scored";
  $("threshold").textContent = result.threshold.toFixed(3) + " (positive when score > threshold)";
  $("score-name").textContent = result.score_name;
  renderFusion(result.fusion);
  const fna = $("fna");
  const advice = result.fna && result.fna.advice;
  fna.hidden = !(result.fna && (advice || result.fna.rule));
  if (!fna.hidden) {
    fna.replaceChildren();
    const head = document.createElement("strong");
    head.textContent = advice ? advice.recommendation + " (" + advice.size_mm + " mm, " +
      advice.tirads_level + " cut-offs: FNA if >= " + advice.fna_cutoff_mm + " mm)"
      : result.fna.note;
    const rule = document.createElement("p");
    rule.className = "muted";
    rule.textContent = "Rule: " + result.fna.rule + ". Source: " + result.fna.source + ".";
    fna.append(head, rule);
  }
  const heat = result.heatmap;
  $("heatmap-figure").hidden = !heat;
  if (heat) {
    $("heatmap").src = heat.png;
    $("heatmap-caption").textContent = heat.caption;
  }
  const grid = document.createElement("div");
  grid.className = "image-grid";
  for (const image of result.images || []) {
    const card = document.createElement("div");
    card.className = "image-card";
    const caption = document.createElement("p");
    caption.textContent = image.probability === null
      ? image.name + ": not judged (" + image.not_judged + ")"
      : image.name + ": " + image.probability.toFixed(3);
    if (image.cam_png) {
      const img = document.createElement("img");
      img.src = image.cam_png;
      img.alt = "class activation map of " + image.name;
      card.append(img);
    }
    card.append(caption);
    grid.append(card);
  }
  $("images").replaceChildren(grid);
  $("result").hidden = false;
}

async function submit(event) {
  event.preventDefault();
  clearMessages();
  $("result").hidden = true;
  const files = Array.from($("files").files);
  const mask = $("organ-mask").files[0];
  const tooBig = checkSizes(mask ? files.concat([mask]) : files);
  if (tooBig) { showError(tooBig); return; }
  const token = $("token").value.trim();
  if (token) sessionStorage.setItem("cadx-token", token);
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  if (mask && !$("mask-row").hidden) form.append("organ_mask", mask, mask.name);
  form.append("lesion_size_mm", $("size").value);
  if (!$("clinical-row").hidden) {
    for (const input of $("clinical-fields").querySelectorAll("[data-column]")) {
      const value = input.value.trim();
      if (value) form.append("clinical", input.dataset.column + "=" + value);
    }
  }
  $("submit").disabled = true;
  $("status").textContent = "Running the model...";
  try {
    // The model in the URL: the service checks it before receiving the upload.
    const url = "/v1/diagnose?model=" + encodeURIComponent($("model").value);
    const response = await fetch(url, {
      method: "POST", body: form, headers: authHeaders(),
    });
    if (!response.ok) {
      const retry = response.headers.get("Retry-After");
      showError(await readError(response) + (retry ? " (retry in " + retry + " s)" : ""));
      return;
    }
    render(await response.json());
    $("status").textContent = "Done.";
  } catch (e) {
    showError("The request failed: " + e.message);
  } finally {
    $("submit").disabled = false;
    if (!$("error").hidden) $("status").textContent = "";
  }
}

$("model").addEventListener("change", modelChanged);
$("diagnose-form").addEventListener("submit", submit);
$("token").addEventListener("change", loadModels);
loadModels().catch((e) => showError("Cannot reach the service: " + e.message));
