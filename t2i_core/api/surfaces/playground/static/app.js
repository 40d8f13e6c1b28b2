// The playground: plain JavaScript over the public API only (no framework, nothing from a CDN).
// Text to image runs as tasks (/tasks/generate/submit, then progress with preview=1 for the live
// preview, then get); image to image and inpainting go to /edit. One request per image, seeds seed + k.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_ADAPTERS = 4;
const POLL_MS = 250;
const MASK_COLOR = [255, 45, 122];  // how painted pixels show over the image; sent as white
const state = {
  lastSeed: null,
  editImage: null,     // base64 of the image being edited
  models: [],          // /v1/models rows
  adapters: [],        // /v1/adapters rows
  controlnets: [],     // /v1/controlnets rows
  controlImage: null,  // base64 of the control image
  run: null,           // the run in progress: {abort: AbortController, tasks: Set of task ids}
};

function headers(json = true) {
  const h = json ? { "Content-Type": "application/json" } : {};
  const key = $("api-key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function apiError(response) {
  try {
    const body = await response.json();
    const err = body.error;
    return typeof err === "string" ? err : (err && err.message) || JSON.stringify(body);
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function readBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function blobBase64(blob) { return readBase64(blob); }

// ---- models, adapters and ControlNets -------------------------------------------------------

async function loadModels() {
  const select = $("model");
  try {
    const response = await fetch("/v1/models", { headers: headers(false) });
    if (!response.ok) throw new Error(await apiError(response));
    state.models = (await response.json()).data;
    select.replaceChildren(...state.models.map((m) => {
      const option = new Option(`${m.id}${m.state && m.state !== "loaded" ? ` (${m.state})` : ""}`, m.id);
      option.disabled = m.state === "unavailable";
      option.selected = Boolean(m.default);
      return option;
    }));
  } catch (err) {
    setStatus(`could not list models: ${err.message}`, true);
  }
  await loadControls();
}

async function loadControls() {
  for (const kind of ["adapters", "controlnets"]) {
    try {
      const response = await fetch(`/v1/${kind}`, { headers: headers(false) });
      if (!response.ok) throw new Error(await apiError(response));
      state[kind] = (await response.json()).data;
    } catch (err) {
      state[kind] = [];
    }
  }
  refreshControls();
}

/** The pipeline family of the selected model (adapters and ControlNets name it); null if unknown. */
function selectedFamily() {
  const model = state.models.find((m) => m.id === $("model").value);
  return model ? model.pipeline || null : null;
}

/** What an edit of the selected model is: "strength" (image to image, inpainting) or "reference"
 * (instruction edits: the image is a reference, strength and masks do not apply). */
function selectedEdits() {
  const model = state.models.find((m) => m.id === $("model").value);
  return (model && model.edits && model.edits.kind) || "strength";
}

function fitting(rows) {
  const family = selectedFamily();
  return rows.filter((row) => row.state !== "unavailable" && (!family || row.family === family));
}

function refreshControls() {
  const adapters = fitting(state.adapters);
  for (const row of [...document.querySelectorAll(".adapter-row")]) {
    const select = row.querySelector(".adapter-id");
    const chosen = select.value;
    if (!adapters.some((a) => a.id === chosen)) { row.remove(); continue; }
    fillAdapterSelect(select, adapters, chosen);
  }
  updateAdapterButtons();
  const controlnets = fitting(state.controlnets);
  const select = $("controlnet");
  const chosen = select.value;
  select.replaceChildren(new Option("none", ""), ...controlnets.map((c) => new Option(c.id, c.id)));
  select.value = controlnets.some((c) => c.id === chosen) ? chosen : "";
  updateControlScale();
  $("strength").disabled = selectedEdits() === "reference";  // instruction edits take no strength
}

function adapterLabel(a) {
  return a.trigger_words && a.trigger_words.length ? `${a.id} (trigger: ${a.trigger_words.join(", ")})` : a.id;
}

function fillAdapterSelect(select, adapters, chosen) {
  select.replaceChildren(...adapters.map((a) => {
    const option = new Option(adapterLabel(a), a.id);
    option.title = a.description || "";
    return option;
  }));
  select.value = chosen;
}

function chosenAdapters() {
  return [...document.querySelectorAll(".adapter-row")].map((row) => row.querySelector(".adapter-id").value);
}

function addAdapter() {
  const adapters = fitting(state.adapters);
  const free = adapters.filter((a) => !chosenAdapters().includes(a.id));
  if (!free.length || chosenAdapters().length >= MAX_ADAPTERS) return;
  const row = $("adapter-row").content.firstElementChild.cloneNode(true);
  const select = row.querySelector(".adapter-id");
  const weight = row.querySelector(".adapter-weight");
  fillAdapterSelect(select, adapters, free[0].id);
  weight.value = free[0].weight;
  select.addEventListener("change", () => {
    const adapter = state.adapters.find((a) => a.id === select.value);
    if (adapter) weight.value = adapter.weight;
  });
  row.querySelector(".adapter-remove").addEventListener("click", () => { row.remove(); updateAdapterButtons(); });
  $("adapters").append(row);
  updateAdapterButtons();
}

function updateAdapterButtons() {
  const available = fitting(state.adapters).length;
  const count = chosenAdapters().length;
  $("adapter-add").disabled = !available || count >= Math.min(MAX_ADAPTERS, available);
  $("adapter-hint").textContent = available ? `${count} of at most ${Math.min(MAX_ADAPTERS, available)}`
    : "none registered for this model";
}

function updateControlScale() {
  const controlnet = state.controlnets.find((c) => c.id === $("controlnet").value);
  $("control-scale").placeholder = controlnet ? String(controlnet.conditioning_scale) : "default";
}

// ---- the mask: painted on a canvas over the image being edited, or uploaded ----------------

const mask = { canvas: null, ctx: null, last: null, painted: false };

function resetMask() {
  const img = $("edit-source");
  const canvas = $("mask-canvas");
  const width = 512;
  canvas.width = width;
  canvas.height = Math.max(1, Math.round(width * (img.naturalHeight || 1) / (img.naturalWidth || 1)));
  mask.canvas = canvas;
  mask.ctx = canvas.getContext("2d", { willReadFrequently: true });
  mask.painted = false;
  $("mask-upload").value = "";
  updateMaskState();
}

function updateMaskState() {
  $("mask-state").textContent = mask.painted ? "mask: inpainting the painted area" : "no mask: image to image";
}

function canvasPoint(event) {
  const rect = mask.canvas.getBoundingClientRect();
  const scale = mask.canvas.width / rect.width;
  return { x: (event.clientX - rect.left) * scale, y: (event.clientY - rect.top) * scale, scale };
}

function paint(event) {
  const p = canvasPoint(event);
  const ctx = mask.ctx;
  const color = `rgb(${MASK_COLOR.join(",")})`;
  ctx.strokeStyle = ctx.fillStyle = color;
  ctx.lineCap = "round";
  ctx.lineWidth = Number($("brush-size").value) * p.scale;
  ctx.beginPath();
  if (mask.last) {
    ctx.moveTo(mask.last.x, mask.last.y);
    ctx.lineTo(p.x, p.y);
    ctx.stroke();
  } else {
    ctx.arc(p.x, p.y, ctx.lineWidth / 2, 0, 2 * Math.PI);
    ctx.fill();
  }
  mask.last = p;
  mask.painted = true;
  updateMaskState();
}

function setupMaskPainting() {
  const canvas = $("mask-canvas");
  canvas.addEventListener("pointerdown", (event) => {
    if (!mask.ctx) return;
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    mask.last = null;
    paint(event);
  });
  canvas.addEventListener("pointermove", (event) => { if (mask.last && event.buttons) paint(event); });
  const stop = () => { mask.last = null; };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointercancel", stop);
}

async function uploadMask(file) {
  const bitmap = await createImageBitmap(file);
  const { canvas, ctx } = mask;
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  // white (bright) = repaint: shown in the paint colour, the rest left transparent
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const d = pixels.data;
  let any = false;
  for (let i = 0; i < d.length; i += 4) {
    const on = (d[i] * 0.299 + d[i + 1] * 0.587 + d[i + 2] * 0.114) * (d[i + 3] / 255) >= 128;
    [d[i], d[i + 1], d[i + 2]] = MASK_COLOR;
    d[i + 3] = on ? 255 : 0;
    any = any || on;
  }
  ctx.putImageData(pixels, 0, 0);
  mask.painted = any;
  updateMaskState();
}

/** The mask as a base64 PNG (white = repaint, black = keep), or null when nothing is painted. */
function maskBase64() {
  if (!mask.ctx || !mask.painted) return null;
  const { width, height } = mask.canvas;
  const src = mask.ctx.getImageData(0, 0, width, height).data;
  const out = document.createElement("canvas");
  out.width = width;
  out.height = height;
  const octx = out.getContext("2d");
  const pixels = octx.createImageData(width, height);
  let any = false;
  for (let i = 0; i < src.length; i += 4) {
    const v = src[i + 3] >= 128 ? 255 : 0;
    pixels.data[i] = pixels.data[i + 1] = pixels.data[i + 2] = v;
    pixels.data[i + 3] = 255;
    any = any || v > 0;
  }
  if (!any) return null;
  octx.putImageData(pixels, 0, 0);
  return out.toDataURL("image/png").split(",", 2)[1];
}

// ---- requests -------------------------------------------------------------------------------

/** The fields of /generate (and /edit) from the form; the caller adds the seed. */
function requestBody() {
  const body = { prompt: $("prompt").value, format: "png" };
  const model = $("model").value;
  if (model) body.model = model;
  const negative = $("negative_prompt").value.trim();
  if (negative) body.negative_prompt = negative;
  const size = $("size").value;
  if (size) [body.width, body.height] = size.split("x").map(Number);
  if ($("steps").value !== "") body.num_inference_steps = Number($("steps").value);
  if ($("guidance").value !== "") body.guidance_scale = Number($("guidance").value);
  const adapters = [...document.querySelectorAll(".adapter-row")].map((row) => {
    const use = { id: row.querySelector(".adapter-id").value };
    const weight = row.querySelector(".adapter-weight").value;
    if (weight !== "") use.weight = Number(weight);
    return use;
  });
  if (adapters.length) body.adapters = adapters;
  const controlnet = $("controlnet").value;
  if (controlnet) {
    if (!state.controlImage) throw new Error("the ControlNet needs a control image: choose one under ControlNet");
    body.controlnet = controlnet;
    body.control_image = state.controlImage;
    if ($("control-scale").value !== "") body.controlnet_conditioning_scale = Number($("control-scale").value);
  }
  if (state.editImage) {
    body.image = state.editImage;
    if (selectedEdits() === "strength") {  // an instruction edit model reads the image as a reference
      body.strength = Number($("strength").value);
      const maskB64 = maskBase64();
      if (maskB64) body.mask = maskB64;
    }
  }
  return body;
}

function describe(body) {
  const parts = [];
  if (body.mask) parts.push("inpaint");
  else if (body.image) parts.push("edit");
  if (body.adapters) parts.push(body.adapters.map((a) => `${a.id}${a.weight !== undefined ? `:${a.weight}` : ""}`).join(" + "));
  if (body.controlnet) parts.push(body.controlnet);
  return parts;
}

function pendingCard() {
  const card = $("card").content.firstElementChild.cloneNode(true);
  card.classList.add("pending");
  card.querySelector("img").classList.add("preview");
  card.querySelector("img").alt = "live preview";
  card.querySelector("progress").hidden = false;
  card.querySelector(".meta").textContent = "queued";
  return card;
}

function finishCard(card, result, extras) {
  const src = `data:image/png;base64,${result.b64}`;
  card.classList.remove("pending");
  card.dataset.seed = result.seed;
  card.querySelector("progress").hidden = true;
  const img = card.querySelector("img");
  img.classList.remove("preview");
  img.src = src;
  img.alt = `seed ${result.seed}`;
  card.querySelector(".meta").textContent =
    [`seed ${result.seed}`, `${result.seconds.toFixed(2)} s`, result.model, result.size, ...extras].join(" · ");
  const link = card.querySelector(".download");
  link.href = src;
  link.download = `t2i-${result.seed}.png`;
  card.querySelector(".use-seed").addEventListener("click", () => { $("seed").value = result.seed; });
  card.querySelector(".edit").addEventListener("click", () => startEdit(result.b64, src));
}

async function imageResult(response, started, id) {
  return {
    b64: await blobBase64(await response.blob()),
    seed: response.headers.get("X-Seed"),
    model: response.headers.get("X-Model"),
    size: response.headers.get("X-Image-Size"),
    seconds: (performance.now() - started) / 1000,
    id,
  };
}

/** Text to image as a task: submit, poll progress with its live preview, then get the image. */
async function runTask(body, card, run) {
  const started = performance.now();
  const submitted = await fetch("/tasks/generate/submit", { method: "POST", headers: headers(), body: JSON.stringify(body),
                                                            signal: run.abort.signal });
  if (!submitted.ok) throw new Error(await apiError(submitted));
  const { task_id: taskId } = await submitted.json();
  run.tasks.add(taskId);
  card.dataset.task = taskId;
  const img = card.querySelector("img");
  const bar = card.querySelector("progress");
  for (;;) {
    const response = await fetch(`/tasks/generate/progress?task_id=${taskId}&preview=1`, { headers: headers(false) });
    if (!response.ok) throw new Error(await apiError(response));
    const p = await response.json();
    if (p.current_image) {
      img.src = `data:image/png;base64,${p.current_image}`;
      card.dataset.previewStep = p.current_image_step;
    }
    if (p.status === "completed") break;
    if (p.status === "canceled") throw new Error("canceled");
    if (p.status === "failed") break;  // get answers the error
    bar.value = p.fraction || 0;
    card.querySelector(".meta").textContent = p.state === "running" && p.steps ? `step ${p.step} of ${p.steps}` : p.state || p.status;
    await sleep(POLL_MS);
  }
  run.tasks.delete(taskId);
  const got = await fetch(`/tasks/generate/get?task_id=${taskId}`, { headers: headers(false) });
  if (!got.ok) throw new Error(await apiError(got));
  return imageResult(got, started, taskId);
}

/** Image to image or inpainting: one POST /edit (JSON, images as base64). */
async function runEdit(body, card, run) {
  const started = performance.now();
  card.querySelector("img").src = `data:image/png;base64,${body.image}`;
  card.querySelector(".meta").textContent = body.mask ? "inpainting…" : "editing…";
  card.querySelector("progress").removeAttribute("value");  // no steps to show: indeterminate
  const response = await fetch("/edit", { method: "POST", headers: headers(), body: JSON.stringify(body),
                                         signal: run.abort.signal });
  if (!response.ok) throw new Error(await apiError(response));
  return imageResult(response, started, response.headers.get("X-Request-ID"));
}

async function generate(event) {
  event.preventDefault();
  if (state.run) return;
  let body;
  try {
    body = requestBody();
  } catch (err) {
    setStatus(err.message, true);
    return;
  }
  if (!body.prompt.trim()) { setStatus("a prompt is required", true); return; }
  const n = Math.max(1, Number($("n").value) || 1);
  const seed = $("seed").value === "" ? null : Number($("seed").value);
  const edit = Boolean(body.image);
  const extras = describe(body);
  const run = { abort: new AbortController(), tasks: new Set(), canceled: false };
  state.run = run;
  $("generate").disabled = true;
  $("cancel").hidden = false;
  setStatus(`${edit ? (body.mask ? "inpainting" : "editing") : "generating"} ${n} image${n > 1 ? "s" : ""}…`);
  const started = performance.now();
  const cards = Array.from({ length: n }, pendingCard);
  $("results").prepend(...cards);  // the first image first
  const jobs = cards.map((card, k) => {
    const item = seed === null ? body : { ...body, seed: seed + k };
    return (edit ? runEdit(item, card, run) : runTask(item, card, run))
      .then((result) => { finishCard(card, result, extras); return result; })
      .catch((err) => { card.remove(); throw err; });
  });
  const settled = await Promise.allSettled(jobs);
  const done = settled.filter((s) => s.status === "fulfilled").map((s) => s.value);
  const failed = settled.filter((s) => s.status === "rejected").map((s) => s.reason);
  const seconds = (performance.now() - started) / 1000;
  if (done.length) {
    state.lastSeed = done[0].seed;
    $("seed-reuse").disabled = false;
  }
  if (run.canceled) {
    setStatus(`canceled${done.length ? ` (${done.length} image${done.length > 1 ? "s" : ""} finished first)` : ""}`);
  } else if (failed.length) {
    setStatus(failed[0].message, true);
  } else {
    const what = edit ? "request id" : "task id";
    setStatus(`${done.length} image${done.length > 1 ? "s" : ""} in ${seconds.toFixed(2)} s ` +
              `(${what}${done.length > 1 ? "s" : ""} ${done.map((r) => r.id || "?").join(", ")})`);
  }
  state.run = null;
  $("generate").disabled = false;
  $("cancel").hidden = true;
}

async function cancel() {
  const run = state.run;
  if (!run) return;
  run.canceled = true;
  setStatus("canceling…");
  run.abort.abort();  // edits: the server stops the work of a closed request
  await Promise.all([...run.tasks].map((taskId) =>
    fetch(`/tasks/generate/cancel?task_id=${taskId}`, { method: "PUT", headers: headers(false) }).catch(() => null)));
}

// ---- editing ----------------------------------------------------------------------------------

function startEdit(b64, src) {
  state.editImage = b64;
  const img = $("edit-source");
  img.onload = resetMask;
  img.src = src;
  if (img.complete && img.naturalWidth) resetMask();
  $("edit-panel").hidden = false;
  $("generate").textContent = "Edit";
}

function stopEdit() {
  state.editImage = null;
  $("edit-panel").hidden = true;
  $("generate").textContent = "Generate";
  $("edit-upload").value = "";
}

$("form").addEventListener("submit", generate);
$("cancel").addEventListener("click", cancel);
$("seed-random").addEventListener("click", () => { $("seed").value = ""; });
$("seed-reuse").addEventListener("click", () => { if (state.lastSeed !== null) $("seed").value = state.lastSeed; });
$("strength").addEventListener("input", () => { $("strength-value").textContent = $("strength").value; });
$("brush-size").addEventListener("input", () => { $("brush-value").textContent = $("brush-size").value; });
$("mask-clear").addEventListener("click", resetMask);
$("mask-upload").addEventListener("change", async () => {
  const file = $("mask-upload").files[0];
  if (file) await uploadMask(file).catch((err) => setStatus(`could not read the mask: ${err.message}`, true));
});
$("edit-upload").addEventListener("change", async () => {
  const file = $("edit-upload").files[0];
  if (!file) return;
  const b64 = await readBase64(file);
  startEdit(b64, `data:${file.type || "image/png"};base64,${b64}`);
});
$("edit-clear").addEventListener("click", stopEdit);
$("model").addEventListener("change", refreshControls);
$("adapter-add").addEventListener("click", addAdapter);
$("controlnet").addEventListener("change", updateControlScale);
$("control-image").addEventListener("change", async () => {
  const file = $("control-image").files[0];
  state.controlImage = file ? await readBase64(file) : null;
  $("control-preview").hidden = !file;
  if (file) $("control-preview").src = `data:${file.type || "image/png"};base64,${state.controlImage}`;
});
setupMaskPainting();
$("api-key").value = localStorage.getItem("t2i-api-key") || "";
$("api-key").addEventListener("change", () => { localStorage.setItem("t2i-api-key", $("api-key").value); loadModels(); });
loadModels();
