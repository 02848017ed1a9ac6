// The browser's classifier-free guidance (ddpm_lightning/web/guidance.js) against Python's
// ClassifierFreeGuidance + samplers, from tests/fixtures/web_samplers.json ("guided", written by
// tests/web_sampler_numbers.py). Run: node --test tests/js/
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { makeSampler } from "../../ddpm_lightning/web/samplers.js";
import { classLabels, combine, guidancePlan, repeatBatch } from "../../ddpm_lightning/web/guidance.js";

const fixture = JSON.parse(readFileSync(new URL("../fixtures/web_samplers.json", import.meta.url)));
const f = (a) => Float32Array.from(a);

function assertClose(actual, expected, tol, what) {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let k = 0; k < expected.length; k++) {
    const err = Math.abs(actual[k] - expected[k]);
    assert.ok(err <= tol * Math.max(1, Math.abs(expected[k])), `${what}[${k}]: ${actual[k]} vs ${expected[k]}`);
  }
}

// The stand-in network of the Python cases: (x0, eps)_cond for rows with a class, _uncond for
// rows with the null class; it checks it gets x_t once per row.
function standIn(c, rowsXt) {
  const size = c.x_t.length / c.labels.length;
  const pick = (condKey, uncondKey) => {
    const out = new Float32Array(rowsXt.length);
    return (labels) => {
      labels.forEach((label, r) => {
        const b = r % c.labels.length;
        const src = label === c.null_class ? c[uncondKey] : c[condKey];
        out.set(src.slice(b * size, (b + 1) * size), r * size);
      });
      return out;
    };
  };
  return (labels) => ({ x0: pick("cond_x0", "uncond_x0")(labels), eps: pick("cond_eps", "uncond_eps")(labels) });
}

test("a guided step matches Python's ClassifierFreeGuidance and sampler step", () => {
  assert.ok(fixture.guided.length >= 6);
  for (const c of fixture.guided) {
    const what = `${c.name}-${c.num_steps} step ${c.index} w=${c.w}`;
    const plan = guidancePlan(c.labels, c.w, c.null_class);
    // one network call, with the same rows as Python's (cond labels, then the null class)
    assert.deepEqual([plan.labels], c.network_calls, `${what}: network call`);
    const xt = f(c.x_t);
    const rowsXt = repeatBatch(xt, plan.rows / c.labels.length);
    assert.equal(rowsXt.length, plan.rows * (xt.length / c.labels.length));
    const pred = combine(plan, standIn(c, rowsXt)(plan.labels));
    assertClose(pred.x0, c.guided_x0, 1e-6, `${what} guided x0`);
    assertClose(pred.eps, c.guided_eps, 1e-6, `${what} guided eps`);
    const s = makeSampler(fixture.schedule, { name: c.name, numSteps: c.num_steps, eta: c.options.eta ?? 0, clip: c.options.clip_denoised });
    assert.equal(s.timesteps[c.index], c.t);
    const out = s.step(c.index, xt, pred.x0, pred.eps, f(c.noise));
    assertClose(out.prev, c.prev, 1e-5, `${what} x_prev`);
    assertClose(out.x0, c.pred_x0, 1e-6, `${what} x0_hat`);
  }
});

test("class labels: one class, or all = sample i gets class i mod K; bad values refused", () => {
  assert.deepEqual(classLabels(2, 3, 10), [2, 2, 2]);
  assert.deepEqual(classLabels("7", 2, 10), [7, 7]);
  assert.deepEqual(classLabels("all", 7, 3), [0, 1, 2, 0, 1, 2, 0]);
  for (const bad of [-1, 10, 2.5, "x", null]) assert.throws(() => classLabels(bad, 2, 10), RangeError);
  for (const bad of [-0.5, NaN, Infinity, "2"]) assert.throws(() => guidancePlan([0], bad, 10), RangeError);
  assert.deepEqual(repeatBatch(f([1, 2]), 2), f([1, 2, 1, 2]));
});
