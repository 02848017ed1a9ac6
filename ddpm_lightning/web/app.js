// The demo page: loads the exported model folder (denoiser.onnx, schedule.json, data_samples.json),
// runs the denoiser with onnxruntime-web (WebGPU where the browser has a GPU adapter, WASM
// otherwise) and the samplers of samplers.js, and draws x_t and x0_hat at every step. A
// class-conditional model (schedule.json's num_classes) gets a class selector and a guidance
// slider: classifier-free guidance as in guidance.js (one batched call of 2B rows per step).
//
// Test hook: `window.ddpmTest` (see the end of this file) lets a browser test run the same
// generate() as the button with its own starting noise, and read the result and the backend.
import { makeSampler, seededNoise } from "./samplers.js";
import { checkGuidance, classLabels, combine, guidancePlan, repeatBatch } from "./guidance.js";

const $ = (id) => document.getElementById(id);
const state = { backend: null, error: null, schedule: null, data: null, session: null, ort: null, running: false };

function showError(message) {
  state.error = message;
  $("error").textContent = message;
  $("error").hidden = false;
}

function setStatus(message) {
  $("status").textContent = message;
}

async function fetchJSON(name) {
  const response = await fetch(name);
  if (!response.ok) throw new Error(`${name}: HTTP ${response.status}`);
  return response.json();
}

// ---- onnxruntime-web -------------------------------------------------------------------------
// The two builds the site ships (ddpm_lightning/web/site.py copies them into ort/): the WebGPU
// build (onnxruntime-web/webgpu) when navigator.gpu gives an adapter, the WASM build otherwise.
async function loadRuntime(modelBytes) {
  const wasmPaths = new URL("./ort/", import.meta.url).href;
  const attempts = [];
  if (navigator.gpu && (await navigator.gpu.requestAdapter().catch(() => null))) {
    attempts.push({ file: "./ort/ort.webgpu.min.mjs", providers: ["webgpu"], backend: "WebGPU" });
  }
  attempts.push({ file: "./ort/ort.wasm.min.mjs", providers: ["wasm"], backend: "WASM" });
  let lastError;
  for (const a of attempts) {
    try {
      const ort = await import(a.file);
      ort.env.wasm.wasmPaths = wasmPaths;
      const session = await ort.InferenceSession.create(modelBytes, { executionProviders: a.providers });
      return { ort, session, backend: a.backend };
    } catch (err) {
      console.warn(`${a.backend} backend failed:`, err);
      lastError = err;
    }
  }
  throw new Error(`could not start onnxruntime-web (${lastError?.message ?? lastError})`);
}

// ---- the denoiser: (x_t, t) -> (x0_hat, eps_hat), with classifier-free guidance when conditional
// One session.run of `rows` rows: x_t (float32), t (float32 timesteps) and, for a class-conditional
// model, class_labels (int64, the null class = num_classes included).
async function runNetwork(x, t, rows, labels) {
  const { ort, session, schedule } = state;
  const feeds = {
    x_t: new ort.Tensor("float32", x, [rows, ...schedule.data_shape]),
    t: new ort.Tensor("float32", new Float32Array(rows).fill(t), [rows]),
  };
  if (labels) feeds.class_labels = new ort.Tensor("int64", BigInt64Array.from(labels, BigInt), [rows]);
  const out = await session.run(feeds);
  return { x0: out.x0.data, eps: out.eps.data };
}

// `labels`: the B class labels (null for an unconditional model); w: the guidance scale.
async function denoise(xt, t, batch, labels, w) {
  if (labels == null) return runNetwork(xt, t, batch, null);
  // Ho & Salimans 2022, eq. 6 on both outputs, one call: the labels' rows, then the null class's
  const plan = guidancePlan(labels, w, nullClass(state.schedule));
  return combine(plan, await runNetwork(repeatBatch(xt, plan.rows / batch), t, plan.rows, plan.labels));
}

const nullClass = (schedule) => schedule.null_class ?? schedule.num_classes;
const isConditional = (schedule) => schedule.num_classes != null;

// The class labels and guidance scale of a generate() call, checked before any work (one line,
// as the Python side's ClassConditioning.prepare and Conditioning.guided refuse them).
function conditioning(options, batch) {
  const { schedule } = state;
  if (!isConditional(schedule)) return { labels: null, w: 1 };
  const labels = classLabels(options.label, batch, schedule.num_classes);
  const w = options.guidance;
  checkGuidance(w);
  if (w !== 1 && schedule.p_uncond === 0) {
    throw new RangeError(`guidance ${w} needs a model trained with condition dropout (p_uncond > 0); this one has p_uncond = 0: use guidance 1`);
  }
  return { labels, w };
}

// ---- drawing ----------------------------------------------------------------------------------
// A batch (B, C, H, W) in [-1, 1] as a grid of images; 2-D data (B, 2) as a scatter plot.
// `place(b) -> [row, col]` puts sample b in the grid (default: row by row, `cols` per row); the
// class "all" passes one row per class (sample b has class b mod K).
function drawBatch(canvas, x, batch, shape, cols = Math.ceil(Math.sqrt(batch)), place = null) {
  const ctx = canvas.getContext("2d");
  if (shape.length === 1) return drawPoints(canvas, ctx, x, batch, shape[0]);
  const [C, H, W] = shape;
  const at = place ?? ((b) => [Math.floor(b / cols), b % cols]);
  const cells = Array.from({ length: batch }, (_, b) => at(b));
  const rows = Math.max(...cells.map(([r]) => r)) + 1;
  cols = Math.max(...cells.map(([, c]) => c)) + 1;
  canvas.width = cols * (W + 1) - 1;
  canvas.height = rows * (H + 1) - 1;
  const img = ctx.createImageData(canvas.width, canvas.height);
  for (let b = 0; b < batch; b++) {
    const ox = cells[b][1] * (W + 1);
    const oy = cells[b][0] * (H + 1);
    for (let i = 0; i < H; i++) {
      for (let j = 0; j < W; j++) {
        const p = ((oy + i) * canvas.width + ox + j) * 4;
        for (let c = 0; c < 3; c++) {
          const v = x[((b * C + (C === 1 ? 0 : c)) * H + i) * W + j];
          img.data[p + c] = Math.round(((Math.max(-1, Math.min(1, v)) + 1) / 2) * 255);
        }
        img.data[p + 3] = 255;
      }
    }
  }
  ctx.putImageData(img, 0, 0);
}

function drawPoints(canvas, ctx, x, batch, dim) {
  canvas.width = canvas.height = 256;
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, 256, 256);
  ctx.fillStyle = "#6cf";
  for (let b = 0; b < batch; b++) {
    const px = 128 + x[b * dim] * 40;
    const py = 128 - x[b * dim + 1] * 40;
    ctx.fillRect(px - 1, py - 1, 2, 2);
  }
}

// The trajectory strip: frames of the first sample, x_t (top row) above x0_hat (bottom row).
function drawStrip(frames, shape) {
  if (shape.length !== 3 || frames.length === 0) return;
  const rows = [...frames.map(([xt]) => xt), ...frames.map(([, x0]) => x0)];
  const size = rows[0].length;
  const all = new Float32Array(rows.length * size);
  rows.forEach((r, k) => all.set(r, k * size));
  drawBatch($("strip-canvas"), all, rows.length, shape, frames.length);
}

// ---- the form ---------------------------------------------------------------------------------
function readForm() {
  const form = $("generate-form");
  if (!form.reportValidity()) return null; // steps outside [1, T], a negative eta, ...
  return {
    sampler: $("sampler").value,
    steps: Number($("steps").value),
    eta: Number($("eta").value),
    seed: Number($("seed").value),
    batch: Number($("batch").value),
    label: $("class").value, // "0".."K-1" or "all"
    guidance: Number($("guidance").value),
  };
}

const FRAMES = 10; // frames in the trajectory strip

// Generate one batch, drawing every step. `noise` (optional, B * size floats) replaces the seeded
// starting noise (the test hook's way to compare with Python from the same x_T).
async function generate(options, noise = null) {
  const { schedule } = state;
  const size = schedule.data_shape.reduce((a, b) => a * b, 1);
  const { batch } = options;
  const sampler = makeSampler(schedule, { name: options.sampler, numSteps: options.steps, eta: options.eta });
  const { labels, w } = conditioning(options, batch);
  // class "all": one row per class (sample b has class b mod K), as the sample command's grid
  const K = schedule.num_classes;
  const place = labels && options.label === "all" ? (b) => [b % K, Math.floor(b / K)] : null;
  const draw = (canvas, v) => drawBatch(canvas, v, batch, schedule.data_shape, undefined, place);
  let x = noise ? Float32Array.from(noise) : seededNoise(options.seed, batch, size);
  if (x.length !== batch * size) throw new RangeError(`noise has ${x.length} values, expected ${batch * size}`);
  const n = sampler.timesteps.length;
  const keep = new Set(Array.from({ length: Math.min(FRAMES, n) }, (_, k) => Math.round((k * (n - 1)) / Math.max(1, FRAMES - 1))));
  const frames = [];
  const stepMs = [];
  state.running = true;
  $("generate").disabled = true;
  try {
    for (let i = 0; i < n; i++) {
      const t = sampler.timesteps[i];
      const start = performance.now();
      const pred = await denoise(x, t, batch, labels, w);
      // step noise: one stream per (seed, step, sample), independent of the batch size
      const z = sampler.needsNoise(i) ? seededNoise(options.seed * 100003 + i + 1, batch, size) : null;
      const { prev, x0 } = sampler.step(i, x, pred.x0, pred.eps, z);
      stepMs.push(performance.now() - start);
      if (keep.has(i)) frames.push([x.slice(0, size), x0.slice(0, size)]);
      draw($("xt-canvas"), x);
      draw($("x0-canvas"), x0);
      x = prev;
      const mean = stepMs.reduce((a, b) => a + b, 0) / stepMs.length;
      $("progress").textContent = `step ${i + 1}/${n}, t = ${t}: ${stepMs[i].toFixed(1)} ms (mean ${mean.toFixed(1)} ms per step, ${state.backend})`;
      await new Promise((resolve) => setTimeout(resolve, 0)); // let the page repaint
    }
    draw($("xt-canvas"), x);
    frames.push([x.slice(0, size), x.slice(0, size)]);
    drawStrip(frames, schedule.data_shape);
  } finally {
    state.running = false;
    $("generate").disabled = false;
  }
  const totalMs = stepMs.reduce((a, b) => a + b, 0);
  return { samples: Array.from(x), shape: [batch, ...schedule.data_shape], timesteps: Array.from(sampler.timesteps), backend: state.backend,
    labels, guidance: w, stepMs, totalMs };
}

// ---- the forward process view -----------------------------------------------------------------
function drawForward() {
  const { schedule, data } = state;
  if (!schedule || !data) return;
  const size = data.shape.slice(1).reduce((a, b) => a * b, 1);
  const idx = Math.min(Math.max(0, Number($("forward-index").value) || 0), data.shape[0] - 1);
  const t = Number($("forward-t").value);
  const x0 = data.data.slice(idx * size, (idx + 1) * size);
  const eps = seededNoise(12345, 1, size, idx); // fixed noise per image, so the slider moves smoothly
  const abar = schedule.alphas_cumprod[t];
  // DDPM eq. 4: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
  const xt = x0.map((v, k) => Math.sqrt(abar) * v + Math.sqrt(1 - abar) * eps[k]);
  $("forward-t-value").textContent = `${t} (ᾱ = ${abar.toPrecision(3)})`;
  drawBatch($("forward-x0"), x0, 1, data.shape.slice(1));
  drawBatch($("forward-xt"), xt, 1, data.shape.slice(1));
  // the same image and noise at FORWARD_TS fractions of the schedule, left to right
  const T = schedule.num_timesteps;
  const strip = FORWARD_TS.flatMap((f) => {
    const a = schedule.alphas_cumprod[Math.round(f * (T - 1))];
    return Array.from(x0, (v, k) => Math.sqrt(a) * v + Math.sqrt(1 - a) * eps[k]);
  });
  drawBatch($("forward-strip"), strip, FORWARD_TS.length, data.shape.slice(1), FORWARD_TS.length);
}
const FORWARD_TS = [0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1];

// ---- start-up ---------------------------------------------------------------------------------
async function loadModelFiles() {
  const [schedule, modelResponse] = await Promise.all([
    fetchJSON("schedule.json").catch((err) => err),
    fetch("denoiser.onnx").catch((err) => err),
  ]);
  const missing = [];
  if (schedule instanceof Error) missing.push("schedule.json");
  if (modelResponse instanceof Error || !modelResponse.ok) missing.push("denoiser.onnx");
  if (missing.length) throw new Error(`model files missing or unreadable: ${missing.join(", ")}; export the model into this folder (python -m ddpm_lightning.export ... format=web)`);
  return { schedule, modelBytes: new Uint8Array(await modelResponse.arrayBuffer()) };
}

function setUpForm(schedule) {
  const T = schedule.num_timesteps;
  $("steps").max = String(T);
  $("forward-t").max = String(T - 1);
  const d = schedule.default_sampler ?? {};
  if (d.name === "ddpm" || d.name === "ddim") $("sampler").value = d.name;
  if (Number.isInteger(d.num_steps) && d.num_steps >= 1 && d.num_steps <= T) $("steps").value = String(d.num_steps);
  if (typeof d.eta === "number") $("eta").value = String(d.eta);
  if (schedule.data_shape.length === 1) $("batch").max = "2048";
  const toggleEta = () => ($("eta-label").hidden = $("sampler").value !== "ddim");
  $("sampler").addEventListener("change", toggleEta);
  toggleEta();
  if (isConditional(schedule)) setUpClassControls(schedule);
  $("generate-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("form-message").textContent = "";
    const options = readForm();
    if (!options || state.running) return;
    try {
      await generate(options);
    } catch (err) {
      $("form-message").textContent = String(err.message ?? err);
    }
  });
  for (const id of ["steps", "eta", "batch", "seed"]) {
    $(id).addEventListener("input", () => ($("form-message").textContent = $(id).validationMessage));
  }
}

// Class-conditional models only: classes 0..K-1 and "all" (one row per class; the null class K is
// the guidance's unconditional pass, not a choice), and w in [0, 8] from the model's default.
function setUpClassControls(schedule) {
  const K = schedule.num_classes;
  const names = schedule.class_names ?? [];
  $("class").replaceChildren(
    ...Array.from({ length: K }, (_, k) => new Option(names[k] != null ? `${k}: ${names[k]}` : String(k), String(k))),
    new Option("all (one row per class)", "all"),
  );
  const guidance = $("guidance");
  const show = () => ($("guidance-value").textContent = Number(guidance.value).toFixed(1));
  guidance.addEventListener("input", show);
  if (schedule.p_uncond === 0) {
    // trained without condition dropout: its null class means nothing (Conditioning.guided refuses too)
    guidance.value = "1";
    guidance.disabled = true;
    guidance.title = "this model was trained with p_uncond = 0: no classifier-free guidance";
  } else {
    guidance.value = String(Math.min(8, Math.max(0, schedule.guidance_scale ?? 1)));
  }
  show();
  $("class-controls").hidden = false;
}

async function start() {
  const { schedule, modelBytes } = await loadModelFiles();
  state.schedule = schedule;
  setUpForm(schedule);
  state.data = await fetchJSON("data_samples.json").catch(() => null);
  if (state.data) {
    $("forward-index").max = String(state.data.shape[0] - 1);
    for (const id of ["forward-t", "forward-index"]) $(id).addEventListener("input", drawForward);
    drawForward();
  } else {
    $("forward-message").textContent = "data_samples.json is missing: no real images to noise.";
  }
  setStatus("Starting onnxruntime-web…");
  Object.assign(state, await loadRuntime(modelBytes));
  const T = schedule.num_timesteps;
  const classes = isConditional(schedule) ? `, ${schedule.num_classes} classes (guidance default ${schedule.guidance_scale ?? 1})` : "";
  setStatus(`Backend: ${state.backend}. Model: ${schedule.parameterization} parameterization, T = ${T}, data ${JSON.stringify(schedule.data_shape)}${classes}.`);
  $("generate").disabled = false;
}

const ready = start().then(
  () => ({ backend: state.backend, error: null }),
  (err) => {
    showError(`error: ${err.message ?? err}`);
    setStatus("Generate is disabled.");
    $("generate").disabled = true;
    return { backend: state.backend, error: state.error };
  },
);

// The browser tests' hook: nothing in the UI; the same generate() the button runs.
window.ddpmTest = {
  ready,
  state: () => ({ backend: state.backend, error: state.error, generateDisabled: $("generate").disabled, running: state.running }),
  generate: (options, noise = null) => {
    const guidance = state.schedule?.guidance_scale ?? 1;
    const o = { sampler: "ddim", steps: 50, eta: 0, seed: 0, batch: 16, label: 0, guidance, ...options };
    // show the options in the form, so a screenshot tells what ran
    const fields = [["sampler", "sampler"], ["steps", "steps"], ["eta", "eta"], ["seed", "seed"], ["batch", "batch"]];
    if (state.schedule && isConditional(state.schedule)) fields.push(["class", "label"], ["guidance", "guidance"]);
    for (const [id, key] of fields) $(id).value = String(o[key]);
    $("guidance").dispatchEvent(new Event("input"));
    $("sampler").dispatchEvent(new Event("change"));
    return generate(o, noise);
  },
};
