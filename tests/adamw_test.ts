import { assert, assertAlmostEquals, assertEquals, assertThrows } from "@std/assert";
import { AdamW, getDevice, OutOfMemoryError, Tensor, type Trainable } from "../mod.ts";
import { normalValues } from "./_reference.ts";

const device = getDevice();

/** torch.optim.AdamW's update in float64, written from its documentation. */
function referenceAdamW(
  p: Float64Array,
  grads: Float64Array[],
  o: { lr: number; b1: number; b2: number; eps: number; wd: number; clip?: number },
): Float64Array {
  const m = new Float64Array(p.length), v = new Float64Array(p.length);
  grads.forEach((g0, step0) => {
    const t = step0 + 1;
    let norm = 0;
    for (const x of g0) norm += x * x;
    norm = Math.sqrt(norm);
    const scale = o.clip !== undefined && norm > o.clip ? o.clip / (norm + 1e-6) : 1;
    for (let i = 0; i < p.length; i++) {
      const g = g0[i] * scale;
      p[i] *= 1 - o.lr * o.wd;
      m[i] = o.b1 * m[i] + (1 - o.b1) * g;
      v[i] = o.b2 * v[i] + (1 - o.b2) * g * g;
      const mhat = m[i] / (1 - o.b1 ** t), vhat = v[i] / (1 - o.b2 ** t);
      p[i] -= (o.lr * mhat) / (Math.sqrt(vhat) + o.eps);
    }
  });
  return p;
}

function trainable(name: string, value: Tensor, grad: Tensor): Trainable {
  return { name, value, grad };
}

for (const [wd, clip] of [[0, undefined], [0.1, undefined], [0.01, 0.5]] as const) {
  Deno.test(`AdamW matches the update formula over 5 steps (weight decay ${wd}, clip ${clip ?? "none"})`, () => {
    const n = 1000;
    const init = normalValues(n, 1);
    const grads = Array.from({ length: 5 }, (_, s) => normalValues(n, 10 + s, 0.1));
    using p = Tensor.from(init, { device, category: "weights" });
    using g = Tensor.empty([n], { device, category: "gradients" });
    using opt = new AdamW([trainable("p", p, g)], { lr: 0.01, weightDecay: wd, maxGradNorm: clip });
    for (const grad of grads) {
      g.copyFrom(grad);
      const r = opt.step();
      if (clip !== undefined) assert(r.gradNorm > clip && r.clipScale < 1, "the gradients were clipped");
    }
    const want = referenceAdamW(Float64Array.from(init), grads.map((x) => Float64Array.from(x)), {
      lr: 0.01,
      b1: 0.9,
      b2: 0.999,
      eps: 1e-8,
      wd,
      clip,
    });
    const got = p.toFloat32();
    for (let i = 0; i < n; i++) {
      assertAlmostEquals(got[i], want[i], 1e-5 * (1 + Math.abs(want[i])), `p[${i}]`);
    }
  });
}

Deno.test("AdamW: bf16 parameters keep an f32 master copy, visible in the ledger", () => {
  const n = 4096;
  const init = normalValues(n, 2);
  using p = Tensor.from(init, { dtype: "bf16", device, category: "weights" });
  using p32 = p.cast("f32");
  using g = Tensor.from(normalValues(n, 3, 0.1), { dtype: "bf16", device, category: "gradients" });
  const before = device.memory().current.optimizer_states;
  using opt = new AdamW([trainable("p", p, g)], { lr: 1e-3 });
  assertEquals(
    device.memory().current.optimizer_states - before,
    12 * n,
    "m, v and the master: 12 bytes/param",
  );
  assert(opt.policy.includes("f32 master weights"), opt.policy);
  using pure = Tensor.from(init, { dtype: "bf16", device, category: "weights" });
  using opt2 = new AdamW([trainable("p", pure, g)], { lr: 1e-3, masterWeights: false });
  assertEquals(device.memory().current.optimizer_states - before, 12 * n + 8 * n, "no master: 8 bytes/param");
  // Ten steps of lr 1e-3 move each weight by about 1e-2 (Adam's steps are ~lr): far more than one bf16
  // rounding of it (2^-9 relative), so an optimizer that does nothing, or loses the master, fails here.
  const steps = 10, lr = 1e-3;
  for (let s = 0; s < steps; s++) opt.step();
  const want = referenceAdamW(
    Float64Array.from(p32.toFloat32()),
    Array.from({ length: steps }, () => Float64Array.from(g.toFloat32())),
    { lr, b1: 0.9, b2: 0.999, eps: 1e-8, wd: 0.01 },
  );
  const got = p.toFloat32(), start = p32.toFloat32();
  let moved = 0;
  for (let i = 0; i < n; i++) {
    const tol = Math.abs(want[i]) * 2 ** -8 + 1e-7; // one bf16 rounding of the f32 master, plus f32 sums
    assert(Math.abs(got[i] - want[i]) <= tol, `element ${i}: ${got[i]} vs ${want[i]} (tolerance ${tol})`);
    moved += Math.abs(want[i] - start[i]);
  }
  assert(
    moved / n > 5e-3,
    `the reference moves the weights by ${moved / n} on average: larger than the tolerance`,
  );
  opt2.step();
});

Deno.test("AdamW: a step's native scratch is ledger workspace; no room for it is an error that changes nothing", () => {
  const ps = [3000, 10, 70_000].map((n, i) => {
    const p = Tensor.from(normalValues(n, 30 + i), { device, category: "weights" });
    const g = Tensor.from(normalValues(n, 40 + i, 0.1), { device, category: "gradients" });
    return { p, g };
  });
  try {
    using opt = new AdamW(ps.map(({ p, g }, i) => trainable(`p${i}`, p, g)), { lr: 0.01, maxGradNorm: 1 });
    opt.step(); // the states exist from here on
    const before = ps.map(({ p }) => p.toFloat32());
    const start = device.memory();
    device.setMemoryBudget(start.totalCurrent); // no room for a single byte
    try {
      const e = assertThrows(() => opt.step(), OutOfMemoryError);
      assertEquals(e.details.category, "workspace");
    } finally {
      device.setMemoryBudget(0);
    }
    ps.forEach(({ p }, i) => assertEquals(p.toFloat32(), before[i], `p${i} changed by a refused step`));
    assertEquals(device.memory().totalCurrent, start.totalCurrent);
    device.resetPeak();
    opt.step();
    const grew = device.memory().peak.workspace - start.current.workspace;
    assert(
      grew >= 8 * (ps.length + 1),
      `the chunk numbering and the norm's partial sums are counted: ${grew}`,
    );
    assert(
      ps.some(({ p }, i) => p.toFloat32().some((v, j) => v !== before[i][j])),
      "a step with room updates",
    );
  } finally {
    for (const { p, g } of ps) {
      p.dispose();
      g.dispose();
    }
  }
});
