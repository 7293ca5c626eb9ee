import { assert, assertAlmostEquals, assertEquals, assertThrows } from "@std/assert";
import {
  AdamW,
  AdamW8bit,
  dynamicMap,
  dynamicMapUnsigned,
  getDevice,
  InvalidArgumentError,
  Linear,
  OutOfMemoryError,
  PagedAdamW,
  Tensor,
  type Trainable,
} from "../mod.ts";
import { assertBitEqual, normalValues } from "./_reference.ts";

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

Deno.test("PagedAdamW equals AdamW bit for bit under random eviction patterns", () => {
  const shapes = [[300, 7], [1000], [64, 64]];
  const make = () => shapes.map((s, i) => Tensor.randn(s, { seed: i, device, category: "weights" }));
  const a = make(), b = make();
  const grads = shapes.map((s) => Tensor.empty(s, { device, category: "gradients" }));
  try {
    using plain = new AdamW(a.map((t, i) => trainable(`p${i}`, t, grads[i])), { lr: 0.01, maxGradNorm: 1 });
    using paged = new PagedAdamW(b.map((t, i) => trainable(`p${i}`, t, grads[i])), {
      lr: 0.01,
      maxGradNorm: 1,
      pageSize: 1024, // 256 floats per page: many pages
    });
    let rng = 7;
    const random = () => (rng = (rng * 1103515245 + 12345) % 2147483648) / 2147483648;
    for (let step = 0; step < 8; step++) {
      grads.forEach((g, i) => g.copyFrom(normalValues(g.numel, 100 * step + i, 0.3)));
      // Squeeze: a budget just above what is in use, then an allocation that only fits if pages move.
      // The plain optimizer's m and v (8 bytes x 7196 parameters) stay; the rest of the states are pages.
      const pagedResident = device.memory().current.optimizer_states - 8 * 7196;
      if (random() < 0.6 && pagedResident > 0) {
        device.setMemoryBudget(device.memory().totalCurrent + 4096);
        try {
          const floats = 1024 + Math.floor((random() * pagedResident) / 4);
          const outs = paged.stats().pageOuts;
          using _spike = Tensor.empty([floats], { device });
          assert(floats * 4 <= 4096 || paged.stats().pageOuts > outs, "the spike made pages move");
        } finally {
          device.setMemoryBudget(0);
        }
      }
      if (random() < 0.3) paged.evictAll();
      plain.step();
      paged.step();
    }
    a.forEach((t, i) => assertBitEqual(b[i].toArray(), t.toArray(), `parameter ${i}`));
    const st = paged.stats();
    assert(st.pageOuts > 0 && st.pageIns > 0, JSON.stringify(st));
    assert(st.bytesIn <= st.bytesOut && st.pageIns <= st.pageOuts, "only evicted pages come back");
    assertEquals(st.resident + st.evicted, st.pages);
  } finally {
    for (const t of [...a, ...b, ...grads]) t.dispose();
  }
});

Deno.test("optimizers: the ledger (device and host pool) returns to where it was after dispose", () => {
  const start = device.memory();
  {
    using layer = new Linear(128, 64, { device });
    using x = Tensor.randn([4, 128], { device });
    using y = layer.forward(x);
    layer.backward(y).dispose();
    using opt = new PagedAdamW(layer.trainables(), { pageSize: 4096 });
    opt.step();
    opt.evictAll();
    assert(device.memory().hostCurrent > start.hostCurrent, "evicted pages sit in the host pool");
    opt.step();
    using opt2 = new AdamW(layer.trainables());
    opt2.step();
  }
  const end = device.memory();
  assertEquals(end.totalCurrent, start.totalCurrent);
  assertEquals(end.hostCurrent, start.hostCurrent);
  assertEquals(end.current.optimizer_states, start.current.optimizer_states);
});

/**
 * The 8-bit AdamW of qlora.h in plain TypeScript, every f32 operation rounded with Math.fround in the
 * header's order: decode, update, apply, encode with the block's new absmax (f32 params, no master).
 */
function reference8bit(
  p: Float32Array,
  grads: Float32Array[],
  o: { lr: number; b1: number; b2: number; eps: number; wd: number },
): Float32Array {
  const f = Math.fround, B = 256;
  const smap = dynamicMap(device), umap = dynamicMapUnsigned(device);
  const mids = (map: Float32Array) => Array.from({ length: 255 }, (_, k) => f(f(map[k] + map[k + 1]) * 0.5));
  const smid = mids(smap), umid = mids(umap);
  const code = (mid: number[], x: number) => mid.filter((m) => m < x).length;
  const n = p.length, blocks = Math.ceil(n / B);
  const mc = new Uint8Array(n), vc = new Uint8Array(n);
  const ma = new Float32Array(blocks), va = new Float32Array(blocks);
  grads.forEach((g, s0) => {
    const t = s0 + 1;
    const lr = f(o.lr); // the step's scalars reach the library as f32
    const decay = f(1 - f(lr * f(o.wd)));
    const step = f(lr / f(1 - o.b1 ** t));
    const sbc2 = f(Math.sqrt(f(1 - o.b2 ** t)));
    for (let b = 0; b < blocks; b++) {
      const mNew: number[] = [], vNew: number[] = [];
      for (let i = b * B; i < Math.min(n, (b + 1) * B); i++) {
        const w = f(p[i] * decay);
        const mi = f(f(f(o.b1) * f(smap[mc[i]] * ma[b])) + f(f(1 - f(o.b1)) * g[i]));
        const vi = f(f(f(o.b2) * f(umap[vc[i]] * va[b])) + f(f(f(1 - f(o.b2)) * g[i]) * g[i]));
        const denom = f(f(f(Math.sqrt(vi)) / sbc2) + f(o.eps));
        p[i] = f(w - f(f(step * mi) / denom));
        mNew.push(mi), vNew.push(vi);
      }
      ma[b] = mNew.reduce((a, x) => Math.max(a, Math.abs(x)), 0);
      va[b] = vNew.reduce((a, x) => Math.max(a, x), 0);
      const mi = ma[b] > 0 ? f(1 / ma[b]) : 0, vi = va[b] > 0 ? f(1 / va[b]) : 0;
      mNew.forEach((x, k) => mc[b * B + k] = code(smid, f(x * mi)));
      vNew.forEach((x, k) => vc[b * B + k] = code(umid, f(x * vi)));
    }
  });
  return p;
}

Deno.test("AdamW8bit equals the 8-bit update of qlora.h bit for bit, and tracks f32 AdamW closely", () => {
  const n = 256 * 3 + 37; // three whole blocks and a partial one
  const init = normalValues(n, 3);
  const grads = Array.from({ length: 6 }, (_, s) => normalValues(n, 30 + s, 0.1));
  const o = { lr: 0.01, b1: 0.9, b2: 0.999, eps: 1e-8, wd: 0.01 };
  const run = (Opt: typeof AdamW | typeof AdamW8bit) => {
    using p = Tensor.from(init, { device, category: "weights" });
    using g = Tensor.empty([n], { device, category: "gradients" });
    using opt = new Opt([trainable("p", p, g)], { lr: o.lr, weightDecay: o.wd });
    for (const grad of grads) g.copyFrom(grad), opt.step();
    return p.toFloat32();
  };
  const eight = run(AdamW8bit), full = run(AdamW);
  const want = reference8bit(Float32Array.from(init), grads, o);
  assertBitEqual(eight, want, "bit for bit against the reference");
  // 8-bit states move the weights as f32 states do, within a small fraction of the total movement
  let moved = 0, apart = 0;
  for (let i = 0; i < n; i++) moved += Math.abs(full[i] - init[i]), apart += Math.abs(eight[i] - full[i]);
  assert(apart < 0.05 * moved, `8-bit vs f32 AdamW: ${apart} apart for ${moved} moved`);
});

Deno.test("AdamW8bit: 2 bytes per parameter plus 8 per block in the ledger, bf16 with masters, zero after dispose", () => {
  const start = device.memory().current.optimizer_states;
  using w = Tensor.randn([1000], { device, dtype: "bf16" });
  using g = Tensor.randn([1000], { device, dtype: "bf16", seed: 2 });
  {
    using opt = new AdamW8bit([trainable("w", w, g)]);
    const blocks = Math.ceil(1000 / 256);
    assertEquals(device.memory().current.optimizer_states - start, 2 * 1000 + 8 * blocks + 4 * 1000);
    assert(opt.policy.includes("8-bit") && opt.policy.includes("6.03 bytes"), opt.policy);
    const before = w.toFloat32();
    opt.step();
    assert(w.toFloat32().some((x, i) => x !== before[i]), "the bf16 weights moved");
  }
  assertEquals(device.memory().current.optimizer_states, start);
});

Deno.test("the native 8-bit step refuses a segment with null pointers", () => {
  const view = new Uint8Array(72); // all zeros: param is null
  const status = device.native.symbols.qlora_adamw8_step(view, 1n, 0.01, 0.9, 0.999, 1e-8, 0, 0.1, 0.001, 1);
  assert(status !== 0, "an error status");
  assertThrows(() => device.check(status), Error, "param is null");
});

Deno.test("optimizers refuse bad parameters, gradients and options", () => {
  using p = Tensor.randn([10], { device });
  using g = Tensor.randn([9], { device });
  using u = Tensor.from(new Uint8Array(10), { device });
  assertThrows(() => new AdamW([]), InvalidArgumentError, "no parameters");
  assertThrows(() => new AdamW([trainable("u", u, u)]), InvalidArgumentError, "f32 or bf16");
  assertThrows(() => new AdamW([trainable("p", p, g)], { lr: -1 }), InvalidArgumentError, "lr");
  assertThrows(() => new AdamW([trainable("p", p, g)], { betas: [1, 0.9] }), InvalidArgumentError, "betas");
  assertThrows(
    () => new PagedAdamW([trainable("p", p, g)], { pageSize: 100 }),
    InvalidArgumentError,
    "pageSize",
  );
  using opt = new AdamW([trainable("p", p, g)]);
  assertThrows(() => opt.step(), InvalidArgumentError, "f32 or bf16 [10]");
  using opt2 = new AdamW([{ name: "q", value: p, grad: null }]);
  assertThrows(() => opt2.step(), InvalidArgumentError, "no gradient");
});

/**
 * The spike test: a full fine-tuning step whose activation spike does not fit next to the Adam states.
 * Without paging it is an OutOfMemoryError; with paging the states step aside and the step succeeds,
 * with parameters identical (bit for bit) to an unpaged run with no budget.
 */
Deno.test("spike: out of memory without paging, success with paging, same parameters", () => {
  const inp = 256, out = 256, tokens = 8;
  // 480 KB of activations for one step: more than the 64 KB of room, less than that plus the 512 KB of
  // Adam states that paging can move out of the way.
  const spikeFloats = 120_000;
  function run(kind: "plain" | "paged" | "unlimited"): Float32Array {
    using layer = new Linear(inp, out, { seed: 3, device });
    using x = Tensor.randn([tokens, inp], { seed: 4, device });
    const Opt = kind === "paged" ? PagedAdamW : AdamW;
    using opt = new Opt(layer.trainables(), { lr: 1e-2 });
    using warm = layer.forward(x);
    layer.backward(warm).dispose();
    opt.step(); // states are live and resident now
    if (kind !== "unlimited") {
      // Room for what is live plus 64 KB: the spike needs far more, the Adam states (512 KB) would make room.
      device.setMemoryBudget(device.memory().totalCurrent + 65536);
    }
    try {
      using y = layer.forward(x);
      using spike = Tensor.empty([spikeFloats], { device, category: "activations" }); // e.g. a long sequence
      spike.copyFrom(new Float32Array(spikeFloats).fill(1e-3));
      layer.backward(y).dispose();
    } finally {
      device.setMemoryBudget(0);
    }
    opt.step();
    return layer.weight.toFloat32();
  }
  const e = assertThrows(() => run("plain"), OutOfMemoryError);
  assertEquals(e.details.category, "activations");
  assert(e.details.current.optimizer_states >= 2 * 4 * inp * out, "the states were in the way");
  const paged = run("paged");
  const unlimited = run("unlimited");
  assertBitEqual(paged, unlimited, "paged under a budget vs unlimited");
});
