// The vit serve page: pick or drop an image, POST it, draw the top-k bars (and the attention overlay).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { hasAttention: false, lastExplain: null };

function headers(extra = {}) {
  const key = $("apikey").value.trim();
  if (key) extra["Authorization"] = "Bearer " + key;
  return extra;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
  document.body.dataset.state = isError ? "error" : text ? "busy" : "idle";
}

async function errorText(response) {
  try {
    const body = await response.json();
    return (body.error && (body.error.message || body.error)) || response.statusText;
  } catch (_) {
    return response.status + " " + response.statusText;
  }
}

async function loadModel() {
  const response = await fetch("/v1/model", { headers: headers() });
  if (!response.ok) {
    $("model-info").textContent = "model information unavailable: " + (await errorText(response));
    return;
  }
  const model = await response.json();
  state.hasAttention = Boolean(model.has_attention);
  $("overlay-label").hidden = !state.hasAttention;
  $("topk").max = String(model.num_classes);
  $("model-info").textContent =
    `${model.name} · ${model.model_name} · ${model.num_classes} classes · ` +
    `${model.input_size.join("×")} px · ${model.precision} · ${model.provider}`;
}

function drawPredictions(predictions) {
  const list = $("predictions");
  list.replaceChildren();
  for (const p of predictions) {
    const item = document.createElement("li");
    item.className = "prediction";
    const label = document.createElement("div");
    label.className = "bar-label";
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = p.label;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = (100 * p.score).toFixed(1) + "%";
    label.append(name, score);
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = (100 * p.score).toFixed(2) + "%";
    item.append(label, bar);
    list.append(item);
  }
}

// matplotlib's "inferno" at 10 even stops: the same table serve/render.py uses for PNG overlays.
const INFERNO = [[0, 0, 4], [27, 12, 66], [75, 12, 107], [120, 28, 109], [165, 44, 96],
  [207, 68, 70], [237, 105, 37], [251, 154, 6], [247, 208, 60], [252, 255, 164]];

function colour(v) {
  const x = Math.min(Math.max(v, 0), 1) * (INFERNO.length - 1);
  const i = Math.min(Math.floor(x), INFERNO.length - 2);
  const t = x - i;
  return INFERNO[i].map((c, j) => Math.round(c + t * (INFERNO[i + 1][j] - c)));
}

// The map is blended at about 40% opacity so the picture under it stays readable, and the
// plain image is shown beside it (docs/ATTENTION.md).
const OVERLAY_ALPHA = 100;

function drawHeatmap() {
  const canvas = $("heatmap");
  const explained = state.lastExplain;
  const show = Boolean(explained) && $("overlay").checked;
  $("overlay-view").hidden = !show;
  $("figure").classList.toggle("single", !show);
  if (!show) return;
  const img = $("preview");
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const [gh, gw] = explained.grid_size;
  const cells = document.createElement("canvas");
  cells.width = gw;
  cells.height = gh;
  const cellCtx = cells.getContext("2d");
  const pixels = cellCtx.createImageData(gw, gh);
  const flat = explained.grid.flat();
  const low = Math.min(...flat);
  const span = Math.max(...flat) - low || 1;  // min to 0, max to 1, as serve/render.py does
  flat.forEach((value, i) => {
    const [r, g, b] = colour((value - low) / span);
    pixels.data.set([r, g, b, OVERLAY_ALPHA], 4 * i);
  });
  cellCtx.putImageData(pixels, 0, 0);
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingEnabled = true;
  const [left, top, right, bottom] = explained.crop_box;
  ctx.drawImage(cells, left * canvas.width, top * canvas.height,
    (right - left) * canvas.width, (bottom - top) * canvas.height);
}

function showUnknown(result) {
  const note = $("unknown");
  note.hidden = !result.unknown;
  if (result.unknown) {
    const score = result.ood_score == null ? "" : ` (out-of-distribution score ${result.ood_score.toFixed(3)})`;
    note.textContent = "Not one of the known classes" + score;
  }
}

async function classify(file) {
  if (!file) return;
  const preview = $("preview");
  URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  $("overlay-base").src = preview.src;
  state.lastExplain = null;
  $("overlay-view").hidden = true;
  $("figure").classList.add("single");
  $("unknown").hidden = true;
  $("result").hidden = false;
  setStatus("classifying " + file.name + "…");
  const route = state.hasAttention ? "/v1/explain" : "/v1/classify";
  const topk = Math.max(1, parseInt($("topk").value, 10) || 5);
  try {
    const response = await fetch(`${route}?top_k=${topk}`, {
      method: "POST",
      headers: headers({ "Content-Type": file.type || "application/octet-stream" }),
      body: file,
    });
    if (!response.ok) throw new Error(await errorText(response));
    const result = await response.json();
    drawPredictions(result.predictions);
    showUnknown(result);
    if (result.grid) {
      state.lastExplain = result;
      if (preview.complete) drawHeatmap(); else preview.onload = drawHeatmap;
    }
    setStatus("");
    document.body.dataset.state = "done";
  } catch (err) {
    $("predictions").replaceChildren();
    setStatus(String(err.message || err), true);
  }
}

function init() {
  $("apikey").value = localStorage.getItem("vit-api-key") || "";
  $("apikey").addEventListener("change", () => {
    localStorage.setItem("vit-api-key", $("apikey").value.trim());
    loadModel();
  });
  $("file").addEventListener("change", (e) => {
    const file = e.target.files[0];
    e.target.value = "";  // so choosing the same file again (e.g. after entering a key) fires again
    classify(file);
  });
  $("overlay").addEventListener("change", drawHeatmap);
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    classify(e.dataTransfer.files[0]);
  });
  document.body.dataset.state = "idle";
  loadModel();
}

init();
