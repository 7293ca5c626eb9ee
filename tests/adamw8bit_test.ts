import { assert, assertEquals, assertThrows } from "@std/assert";
import {
  AdamW,
  AdamW8bit,
  dynamicMap,
  dynamicMapUnsigned,
  getDevice,
  Tensor,
  type Trainable,
} from "../mod.ts";
import { assertBitEqual, normalValues } from "./_reference.ts";

const device = getDevice();

function trainable(name: string, value: Tensor, grad: Tensor): Trainable {
  return { name, value, grad };
}

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
