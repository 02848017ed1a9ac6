// Classifier-free guidance for the browser: the JS mirror of ddpm_lightning/guidance.py.
//
// A class-conditional denoiser.onnx takes `class_labels` (int64, the null class = num_classes
// included). One guided step runs the network once on 2B rows (the B labels, then B null
// classes, at the same x_t and t) and combines the two halves of both outputs,
//
//     guided = uncond + w (cond - uncond)                      Ho & Salimans 2022, eq. 6
//
// in diffusers' convention for w (1: conditional, 0: unconditional, > 1: guided). Guiding the
// (x0_hat, eps_hat) pair is the same as guiding the raw network output, since both are affine in
// it at fixed x_t (guidance.py's docstring); the samplers consume only that pair. As in Python,
// w = 1 runs only the conditional pass and w = 0 only the unconditional one.
// Tested under Node (tests/js/guidance.test.mjs) against numbers the Python code writes.

// The B labels of a batch: one class for every sample, or "all": sample i gets class i mod K,
// as the Python side's ClassConditioning.balanced (so the page equals cond={"class": "all"}).
export function classLabels(choice, batch, numClasses) {
  if (choice === "all") return Array.from({ length: batch }, (_, i) => i % numClasses);
  // a number, or the select's string value ("7"); nothing else (Number(null) would be 0)
  const c = typeof choice === "number" || (typeof choice === "string" && choice.trim() !== "") ? Number(choice) : NaN;
  if (!Number.isInteger(c) || c < 0 || c >= numClasses) {
    throw new RangeError(`class must be an integer in [0, ${numClasses}) or "all", got ${choice}`);
  }
  return new Array(batch).fill(c);
}

export function checkGuidance(w) {
  if (typeof w !== "number" || !(w >= 0) || !Number.isFinite(w)) {
    throw new RangeError(`guidance scale must be a number >= 0 (1: conditional, 0: unconditional), got ${w}`);
  }
}

// What the one network call gets: { passes, rows (B or 2B), labels (one per row), w }.
export function guidancePlan(labels, w, nullClass) {
  checkGuidance(w);
  const B = labels.length;
  if (w === 1) return { passes: "cond", rows: B, labels: Array.from(labels), w };
  if (w === 0) return { passes: "uncond", rows: B, labels: new Array(B).fill(nullClass), w };
  return { passes: "both", rows: 2 * B, labels: [...labels, ...new Array(B).fill(nullClass)], w };
}

// x (B * size floats) repeated `times` times along the batch: the 2B-row input of both passes.
export function repeatBatch(x, times) {
  const out = new Float32Array(x.length * times);
  for (let k = 0; k < times; k++) out.set(x, k * x.length);
  return out;
}

// uncond + w (cond - uncond), elementwise in float32 as the Python tensors compute it.
export function guide(cond, uncond, w) {
  const out = new Float32Array(cond.length);
  const w32 = Math.fround(w);
  for (let k = 0; k < cond.length; k++) {
    out[k] = Math.fround(uncond[k] + Math.fround(w32 * Math.fround(cond[k] - uncond[k])));
  }
  return out;
}

// The guided { x0, eps } of one network call planned by guidancePlan (outputs of `plan.rows` rows).
export function combine(plan, out) {
  if (plan.passes !== "both") return { x0: Float32Array.from(out.x0), eps: Float32Array.from(out.eps) };
  const half = out.x0.length / 2;
  const [c, u] = [0, half].map((o) => ({ x0: out.x0.subarray(o, o + half), eps: out.eps.subarray(o, o + half) }));
  return { x0: guide(c.x0, u.x0, plan.w), eps: guide(c.eps, u.eps, plan.w) };
}
