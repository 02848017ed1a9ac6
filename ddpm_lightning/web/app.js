// The demo page: loads the exported model folder (denoiser.onnx, schedule.json, data_samples.json),
// runs the denoiser with onnxruntime-web (WebGPU where the browser has a GPU adapter, WASM
// otherwise) and the samplers of samplers.js, and draws x_t and x0_hat at every step.
//
// Test hook: `window.ddpmTest` (see the end of this file) lets a browser test run the same
// generate() as the button with its own starting noise, and read the result and the backend.
import { makeSampler, seededNoise } from "./samplers.js";

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
async function denoise(xt, t, batch, label, guidance) {
  const { ort, session, schedule } = state;
  const shape = [batch, ...schedule.data_shape];
  const run = async (labels) => {
    const feeds = {
      x_t: new ort.Tensor("float32", xt, shape),
      t: new ort.Tensor("float32", new Float32Array(batch).fill(t), [batch]),
    };
    if (labels) feeds.class_labels = new ort.Tensor("int64", BigInt64Array.from(labels, BigInt), [batch]);
    const out = await session.run(feeds);
    return { x0: out.x0.data, eps: out.eps.data };
  };
  if (schedule.num_classes == null) return run(null);
  const cond = await run(new Array(batch).fill(label));
  if (guidance === 1) return cond;
  // Ho & Salimans 2022, eq. 6: eps = eps_uncond + w (eps_cond - eps_uncond); label num_classes = no class
  const uncond = await run(new Array(batch).fill(schedule.num_classes));
  const abar = schedule.alphas_cumprod[t];
  const eps = cond.eps.map((c, k) => uncond.eps[k] + guidance * (c - uncond.eps[k]));
  const x0 = eps.map((e, k) => (xt[k] - Math.sqrt(1 - abar) * e) / Math.sqrt(abar));
  return { x0, eps };
}

// ---- drawing ----------------------------------------------------------------------------------
// A batch (B, C, H, W) in [-1, 1] as a grid of images; 2-D data (B, 2) as a scatter plot.
function drawBatch(canvas, x, batch, shape, cols = Math.ceil(Math.sqrt(batch))) {
  const ctx = canvas.getContext("2d");
  if (shape.length === 1) return drawPoints(canvas, ctx, x, batch, shape[0]);
  const [C, H, W] = shape;
  const rows = Math.ceil(batch / cols);
  canvas.width = cols * (W + 1) - 1;
  canvas.height = rows * (H + 1) - 1;
  const img = ctx.createImageData(canvas.width, canvas.height);
  for (let b = 0; b < batch; b++) {
    const ox = (b % cols) * (W + 1);
    const oy = Math.floor(b / cols) * (H + 1);
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
    label: Number($("class").value || 0),
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
      const pred = await denoise(x, t, batch, options.label, options.guidance);
      // step noise: one stream per (seed, step, sample), independent of the batch size
      const z = sampler.needsNoise(i) ? seededNoise(options.seed * 100003 + i + 1, batch, size) : null;
      const { prev, x0 } = sampler.step(i, x, pred.x0, pred.eps, z);
      stepMs.push(performance.now() - start);
      if (keep.has(i)) frames.push([x.slice(0, size), x0.slice(0, size)]);
      drawBatch($("xt-canvas"), x, batch, schedule.data_shape);
      drawBatch($("x0-canvas"), x0, batch, schedule.data_shape);
      x = prev;
      const mean = stepMs.reduce((a, b) => a + b, 0) / stepMs.length;
      $("progress").textContent = `step ${i + 1}/${n}, t = ${t}: ${stepMs[i].toFixed(1)} ms (mean ${mean.toFixed(1)} ms per step, ${state.backend})`;
      await new Promise((resolve) => setTimeout(resolve, 0)); // let the page repaint
    }
    drawBatch($("xt-canvas"), x, batch, schedule.data_shape);
    frames.push([x.slice(0, size), x.slice(0, size)]);
    drawStrip(frames, schedule.data_shape);
  } finally {
    state.running = false;
    $("generate").disabled = false;
  }
  const totalMs = stepMs.reduce((a, b) => a + b, 0);
  return { samples: Array.from(x), shape: [batch, ...schedule.data_shape], timesteps: Array.from(sampler.timesteps), backend: state.backend, stepMs, totalMs };
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
  if (schedule.num_classes != null) {
    // conditional models only: class labels 0..K-1 (K = "no class", for guidance)
    $("class").replaceChildren(...Array.from({ length: schedule.num_classes }, (_, k) => new Option(String(k), String(k))));
    $("class-controls").hidden = false;
  }
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
  setStatus(`Backend: ${state.backend}. Model: ${schedule.parameterization} parameterization, T = ${T}, data ${JSON.stringify(schedule.data_shape)}.`);
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
    const o = { sampler: "ddim", steps: 50, eta: 0, seed: 0, batch: 16, label: 0, guidance: 1, ...options };
    // show the options in the form, so a screenshot tells what ran
    for (const [id, key] of [["sampler", "sampler"], ["steps", "steps"], ["eta", "eta"], ["seed", "seed"], ["batch", "batch"]]) $(id).value = String(o[key]);
    $("sampler").dispatchEvent(new Event("change"));
    return generate(o, noise);
  },
};
