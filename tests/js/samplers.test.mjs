// The browser samplers (ddpm_lightning/web/samplers.js) against the Python samplers' numbers in
// tests/fixtures/web_samplers.json (written by tests/web_sampler_numbers.py). Run: node --test tests/js/
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import {
  makeTimesteps, ddimCoefficients, ddpmCoefficients, makeSampler, roundHalfEven, seededNoise,
} from "../../ddpm_lightning/web/samplers.js";

const fixture = JSON.parse(readFileSync(new URL("../fixtures/web_samplers.json", import.meta.url)));
const abar = fixture.schedule.alphas_cumprod;

function assertClose(actual, expected, tol, what) {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let k = 0; k < expected.length; k++) {
    const err = Math.abs(actual[k] - expected[k]);
    assert.ok(err <= tol * Math.max(1, Math.abs(expected[k])), `${what}[${k}]: ${actual[k]} vs ${expected[k]}`);
  }
}

test("numpy rounding: halves to even", () => {
  assert.deepEqual([0.5, 1.5, 2.5, -1.5, 936.5, 2.4999].map(roundHalfEven), [0, 2, 2, -2, 936, 2]);
});

test("timesteps match make_timesteps for every spacing and step count", () => {
  assert.ok(fixture.timesteps.length > 90);
  for (const c of fixture.timesteps) {
    assert.deepEqual(Array.from(makeTimesteps(c.T, c.n, c.spacing)), c.timesteps, `T=${c.T} n=${c.n} ${c.spacing}`);
  }
});

test("steps outside [1, T] and unknown spacings are refused", () => {
  for (const n of [0, 1001, 2.5, NaN]) assert.throws(() => makeTimesteps(1000, n, "trailing"), RangeError);
  assert.throws(() => makeTimesteps(1000, 10, "middle"), RangeError);
  assert.throws(() => makeSampler(fixture.schedule, { name: "ddim", numSteps: 10, eta: -1 }), RangeError);
  assert.throws(() => makeSampler(fixture.schedule, { name: "euler", numSteps: 10 }), RangeError);
});

test("DDIM and DDPM coefficient tables match the Python samplers'", () => {
  for (const c of fixture.coefficients) {
    const spacing = c.options.spacing ?? (c.name === "ddim" ? "trailing" : "linspace");
    const ts = makeTimesteps(1000, c.num_steps, spacing);
    assert.deepEqual(Array.from(ts), c.timesteps);
    const js = c.name === "ddim" ? ddimCoefficients(abar, ts, c.options.eta) : ddpmCoefficients(abar, ts, c.options.variance);
    for (const key of c.name === "ddim" ? ["x0", "eps", "std"] : ["x0", "xt", "std"]) {
      // Python stores the tables as float32: compare at float32 precision
      assertClose(js[key].map(Math.fround), c[key], 1e-6, `${c.name}-${c.num_steps} ${key}`);
    }
  }
});

test("one sampler step on given inputs matches Python (clipping, noise, last step)", () => {
  for (const c of fixture.steps) {
    const s = makeSampler(fixture.schedule, {
      name: c.name, numSteps: c.num_steps, eta: c.options.eta ?? 0, clip: c.options.clip_denoised,
    });
    assert.equal(s.timesteps[c.index], c.t);
    const f = (a) => Float32Array.from(a);
    const out = s.step(c.index, f(c.x_t), f(c.x0), f(c.eps), f(c.noise));
    const what = `${c.name}-${c.num_steps} step ${c.index}`;
    assertClose(out.prev, c.prev, 1e-5, `${what} x_prev`);
    assertClose(out.x0, c.pred_x0, 1e-6, `${what} x0_hat`);
  }
});

test("seeded noise: reproducible, per-sample streams, standard normal", () => {
  const a = seededNoise(7, 4, 1000);
  assert.deepEqual(a, seededNoise(7, 4, 1000));
  // sample 2 of a batch of 4 is sample 0 of a batch started at index 2
  assert.deepEqual(a.slice(2000, 3000), seededNoise(7, 1, 1000, 2));
  assert.notDeepEqual(a, seededNoise(8, 4, 1000));
  const mean = a.reduce((s, v) => s + v, 0) / a.length;
  const variance = a.reduce((s, v) => s + (v - mean) ** 2, 0) / a.length;
  assert.ok(Math.abs(mean) < 0.05 && Math.abs(variance - 1) < 0.07, `mean ${mean} var ${variance}`);
});
