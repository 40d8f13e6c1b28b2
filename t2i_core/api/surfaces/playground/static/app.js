// The playground: plain JavaScript over the public API only (no framework, nothing from a CDN).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { lastSeed: null, editImage: null, editFormat: "png" };

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

async function loadModels() {
  const select = $("model");
  try {
    const response = await fetch("/v1/models", { headers: headers(false) });
    if (!response.ok) throw new Error(await apiError(response));
    const { data } = await response.json();
    select.replaceChildren(...data.map((m) => {
      const option = new Option(`${m.id}${m.state && m.state !== "loaded" ? ` (${m.state})` : ""}`, m.id);
      option.disabled = m.state === "unavailable";
      option.selected = Boolean(m.default);
      return option;
    }));
  } catch (err) {
    setStatus(`could not list models: ${err.message}`, true);
  }
}

function requestBody() {
  const body = { prompt: $("prompt").value, model: $("model").value || undefined, n: Number($("n").value) || 1,
                 response_format: "b64_json" };
  const optional = { negative_prompt: $("negative_prompt").value.trim(), size: $("size").value,
                     num_inference_steps: $("steps").value, guidance_scale: $("guidance").value, seed: $("seed").value };
  for (const [key, value] of Object.entries(optional)) {
    if (value !== "") body[key] = ["num_inference_steps", "guidance_scale", "seed"].includes(key) ? Number(value) : value;
  }
  if (state.editImage) {
    body.image = state.editImage;
    body.strength = Number($("strength").value);
  }
  return body;
}

function addCard(item, meta) {
  const card = $("card").content.firstElementChild.cloneNode(true);
  const format = meta.output_format || "png";
  const src = `data:image/${format};base64,${item.b64_json}`;
  card.dataset.seed = item.seed;
  const img = card.querySelector("img");
  img.src = src;
  img.alt = `seed ${item.seed}`;
  card.querySelector(".meta").textContent =
    `seed ${item.seed} · ${meta.seconds.toFixed(2)} s · ${meta.model} · ${meta.size}${meta.edit ? " · edit" : ""}`;
  const link = card.querySelector(".download");
  link.href = src;
  link.download = `t2i-${item.seed}.${format === "jpeg" ? "jpg" : format}`;
  card.querySelector(".use-seed").addEventListener("click", () => { $("seed").value = item.seed; });
  card.querySelector(".edit").addEventListener("click", () => startEdit(item.b64_json, src));
  $("results").prepend(card);
}

function startEdit(b64, src) {
  state.editImage = b64;
  $("edit-source").src = src;
  $("edit-panel").hidden = false;
  $("generate").textContent = "Edit";
}

function stopEdit() {
  state.editImage = null;
  $("edit-panel").hidden = true;
  $("generate").textContent = "Generate";
}

async function generate(event) {
  event.preventDefault();
  const body = requestBody();
  if (!body.prompt.trim()) { setStatus("a prompt is required", true); return; }
  const edit = Boolean(state.editImage);
  const button = $("generate");
  button.disabled = true;
  setStatus(`${edit ? "editing" : "generating"} ${body.n} image${body.n > 1 ? "s" : ""}…`);
  const started = performance.now();
  try {
    const response = await fetch(edit ? "/v1/images/edits" : "/v1/images/generations",
                                 { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (!response.ok) throw new Error(await apiError(response));
    const result = await response.json();
    const seconds = (performance.now() - started) / 1000;
    for (const item of result.data.slice().reverse()) addCard(item, { ...result, seconds, edit });
    state.lastSeed = result.data[0].seed;
    $("seed-reuse").disabled = false;
    setStatus(`${result.data.length} image${result.data.length > 1 ? "s" : ""} in ${seconds.toFixed(2)} s ` +
              `(request id ${response.headers.get("X-Request-ID") || "?"})`);
  } catch (err) {
    setStatus(err.message, true);
  } finally {
    button.disabled = false;
  }
}

$("form").addEventListener("submit", generate);
$("seed-random").addEventListener("click", () => { $("seed").value = ""; });
$("seed-reuse").addEventListener("click", () => { if (state.lastSeed !== null) $("seed").value = state.lastSeed; });
$("strength").addEventListener("input", () => { $("strength-value").textContent = $("strength").value; });
$("edit-clear").addEventListener("click", stopEdit);
$("api-key").value = localStorage.getItem("t2i-api-key") || "";
$("api-key").addEventListener("change", () => { localStorage.setItem("t2i-api-key", $("api-key").value); loadModels(); });
loadModels();
