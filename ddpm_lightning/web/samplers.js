// DDPM and DDIM samplers for the browser: the JS mirror of ddpm_lightning/samplers/{base,ddpm,ddim}.py.
//
// A sampler consumes only the model's (x0_hat, eps_hat) pair, as the Python ones do, so it works
// with every parameterization the ONNX denoiser was exported from. Coefficients are computed in
// float64 from schedule.json's alphas_cumprod (float64 in the JSON, as in Python's
// `alphas_cumprod_f64`); the state x_t is a Float32Array, as the Python loop's float32 tensors.
// Tested under Node (tests/js/samplers.test.mjs) against numbers the Python code writes.

export const SPACINGS = ["leading", "trailing", "linspace"];

// numpy's round(): half to even (Math.round rounds halves up, which would pick other timesteps).
export function roundHalfEven(x) {
  const f = Math.floor(x);
  const d = x - f; // exact for |x| < 2^52
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

// numpy.arange(start, stop, step) for floats: length ceil((stop - start) / step), then
// start + i * delta with delta = (start + step) - start, as numpy's fill() computes it.
function npArange(start, stop, step) {
  const len = Math.max(0, Math.ceil((stop - start) / step));
  const delta = start + step - start;
  return Array.from({ length: len }, (_, i) => (i === 0 ? start : start + i * delta));
}

// numpy.linspace(start, stop, num): arange(num) * step + start, the last element exactly stop.
function npLinspace(start, stop, num) {
  const div = num - 1;
  const delta = stop - start;
  const step = delta / div;
  const y = Array.from({ length: num }, (_, i) =>
    div > 0 ? (step === 0 ? (i / div) * delta : i * step) + start : i * delta + start,
  );
  if (num > 1) y[num - 1] = stop;
  return y;
}

// make_timesteps (samplers/base.py): n of the T timesteps, descending (Lin et al. 2023, Table 2).
//   leading:  0, T//n, 2T//n, ...       trailing: round(T - k T/n) - 1       linspace: round(linspace(0, T-1, n))
export function makeTimesteps(T, n, spacing) {
  if (!Number.isInteger(n) || n < 1 || n > T) {
    throw new RangeError(`number of sampling steps must be an integer in [1, ${T}], got ${n}`);
  }
  let ts;
  if (spacing === "leading") ts = Array.from({ length: n }, (_, i) => i * Math.floor(T / n));
  else if (spacing === "trailing") ts = npArange(T, 0, -T / n).map((v) => roundHalfEven(v) - 1);
  else if (spacing === "linspace") ts = npLinspace(0, T - 1, n).map(roundHalfEven);
  else throw new RangeError(`unknown timestep spacing ${spacing}; choose one of ${SPACINGS.join(", ")}`);
  return Int32Array.from(ts.sort((a, b) => b - a));
}

// abar at each visited timestep and at the one after it (1 after the last step: the clean data,
// diffusers' set_alpha_to_one=True, `final_alphas_cumprod` in base.py).
function abarPairs(alphasCumprod, timesteps) {
  const n = timesteps.length;
  const at = Array.from(timesteps, (t) => alphasCumprod[t]);
  const prev = Array.from({ length: n }, (_, i) => (i + 1 < n ? alphasCumprod[timesteps[i + 1]] : 1.0));
  return { at, prev };
}

// DDIM (Song et al. 2021): sigma_t(eta) of eq. 16 and the eq. 12 coefficients of x0_hat and eps_hat.
export function ddimCoefficients(alphasCumprod, timesteps, eta) {
  const { at, prev } = abarPairs(alphasCumprod, timesteps);
  const std = at.map((a, i) => eta * Math.sqrt(((1 - prev[i]) / (1 - a)) * (1 - a / prev[i])));
  return {
    x0: prev.map(Math.sqrt),
    // "direction pointing to x_t", clamped at 0 (eta > 1 can make it negative), as ddim.py
    eps: prev.map((p, i) => Math.sqrt(Math.max(1 - p - std[i] ** 2, 0))),
    std,
  };
}

// DDPM ancestral (Ho et al. 2020, Algorithm 2) respaced to the visited timesteps (Nichol &
// Dhariwal 2021, sec. 4: beta_t := 1 - abar_t / abar_prev): posterior mean coefficients of eq. 7
// and the fixed_small (beta tilde, clamped at 1e-20 as diffusers) or fixed_large (beta) std.
export function ddpmCoefficients(alphasCumprod, timesteps, variance = "fixed_small") {
  const { at, prev } = abarPairs(alphasCumprod, timesteps);
  const beta = at.map((a, i) => 1 - a / prev[i]);
  const small = at.map((a, i) => ((1 - prev[i]) / (1 - a)) * beta[i]);
  return {
    x0: at.map((a, i) => (Math.sqrt(prev[i]) * beta[i]) / (1 - a)),
    xt: at.map((a, i) => (Math.sqrt(a / prev[i]) * (1 - prev[i])) / (1 - a)),
    std: (variance === "fixed_small" ? small.map((v) => Math.max(v, 1e-20)) : beta).map(Math.sqrt),
  };
}

// Sampler.denoise (base.py): clamp x0_hat to the data range, then re-derive eps_hat from the
// clipped x0_hat so the pair stays consistent with x_t: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar),
// written as (sqrt(1/abar) x_t - x0) / sqrt(1/abar - 1) like process.eps_from_x0.
export function clipPrediction(xt, x0, eps, abar, lo = -1, hi = 1) {
  const x0c = new Float32Array(x0.length);
  const epsc = new Float32Array(eps.length);
  const r = Math.sqrt(1 / abar);
  const rm1 = Math.sqrt(1 / abar - 1);
  for (let k = 0; k < x0.length; k++) {
    x0c[k] = Math.min(hi, Math.max(lo, x0[k]));
    epsc[k] = (r * xt[k] - x0c[k]) / rm1;
  }
  return { x0: x0c, eps: epsc };
}

// Seeded noise: mulberry32 uniforms through Box-Muller. One stream per sample (from the seed and
// the sample's index), as ddpm_lightning/noise.py does, so a sample does not depend on the batch size.
export function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function gaussianStream(seed, index) {
  const u = mulberry32((Math.imul(seed >>> 0, 0x9e3779b1) ^ Math.imul(index + 1, 0x85ebca6b)) >>> 0);
  return () => Math.sqrt(-2 * Math.log(1 - u())) * Math.cos(2 * Math.PI * u());
}

// (B * size) standard normals, sample b from its own stream.
export function seededNoise(seed, batch, size, offset = 0) {
  const out = new Float32Array(batch * size);
  for (let b = 0; b < batch; b++) {
    const g = gaussianStream(seed, offset + b);
    for (let k = 0; k < size; k++) out[b * size + k] = g();
  }
  return out;
}

// A sampler over schedule.json: { timesteps, step(i, xt, x0, eps, noise?) -> { prev, x0 } }.
// `noise` (same length as x_t) is needed only where the step adds noise (`needsNoise(i)`).
export function makeSampler(schedule, { name, numSteps, eta = 0, spacing, variance = "fixed_small", clip } = {}) {
  const abar = schedule.alphas_cumprod;
  const T = schedule.num_timesteps;
  const clipDenoised = clip ?? schedule.clip_denoised;
  const [lo, hi] = schedule.value_range ?? [-1, 1];
  let coefs;
  if (name === "ddim") {
    if (!(eta >= 0)) throw new RangeError(`DDIM eta must be >= 0, got ${eta}`);
    spacing = spacing ?? "trailing"; // ddim.yaml
  } else if (name === "ddpm") {
    spacing = spacing ?? "linspace"; // ddpm.yaml (Nichol & Dhariwal's respacing)
  } else {
    throw new RangeError(`unknown sampler ${name}; choose one of ddpm, ddim`);
  }
  const timesteps = makeTimesteps(T, numSteps, spacing);
  coefs = name === "ddim" ? ddimCoefficients(abar, timesteps, eta) : ddpmCoefficients(abar, timesteps, variance);
  const last = timesteps.length - 1;
  const needsNoise = (i) => i < last && (name === "ddpm" || eta > 0); // no noise into the data at the last step

  function step(i, xt, x0, eps, noise) {
    if (clipDenoised) ({ x0, eps } = clipPrediction(xt, x0, eps, abar[timesteps[i]], lo, hi));
    const prev = new Float32Array(xt.length);
    const c = Object.fromEntries(Object.entries(coefs).map(([k, v]) => [k, Math.fround(v[i])])); // float32, as Python's tables
    const z = needsNoise(i) ? noise : null;
    if (needsNoise(i) && !noise) throw new Error(`step ${i} of ${name} needs noise`);
    for (let k = 0; k < xt.length; k++) {
      // DDIM eq. 12: sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z
      // DDPM Algorithm 2, line 4: mu tilde(x_t, x0_hat) (eq. 7) + sigma z
      const mean = name === "ddim" ? c.x0 * x0[k] + c.eps * eps[k] : c.x0 * x0[k] + c.xt * xt[k];
      prev[k] = z ? mean + c.std * z[k] : mean;
    }
    return { prev, x0 };
  }
  return { name, spacing, timesteps, coefs, needsNoise, step };
}
