// AdamW against the memory traffic it needs, paged against unpaged AdamW when nothing is evicted, and
// paging out and in against plain copies of the same bytes. `./deno task bench`; read the ratios.
import { AdamW, AdamW8bit, getDevice, PagedAdamW, Tensor, type Trainable } from "../mod.ts";

const device = getDevice();
const N = 16 << 20; // 16M f32 parameters: 64 MiB each for p, g, m, v
const make = (seed: number): Trainable => ({
  name: `p${seed}`,
  value: Tensor.randn([N], { seed, device, category: "weights" }),
  grad: Tensor.randn([N], { seed: seed + 1, std: 0.01, device, category: "gradients" }),
});
const a = make(1), b = make(3), c = make(5);
const plain = new AdamW([a]);
const paged = new PagedAdamW([b]);
const eight = new AdamW8bit([c]);
// AdamW reads p, g, m, v and writes p, m, v: 28 bytes per parameter. A copy of 14 bytes per parameter
// moves the same 28 (read + write).
const src = Tensor.empty([(14 * N) / 4], { device }), dst = Tensor.empty([(14 * N) / 4], { device });
const copy = (to: Tensor, from: Tensor) => {
  to.copyFrom(from);
  device.synchronize();
};

Deno.bench({
  name: "copy 224 MiB (= AdamW's traffic)",
  group: "AdamW, 16M f32 params",
  baseline: true,
  fn: () => copy(dst, src),
});
Deno.bench({
  name: "AdamW step",
  group: "AdamW, 16M f32 params",
  fn: () => {
    plain.step();
    device.synchronize();
  },
});
Deno.bench({
  name: "PagedAdamW step, all pages resident",
  group: "AdamW, 16M f32 params",
  fn: () => {
    paged.step();
    device.synchronize();
  },
});

Deno.bench({
  name: "AdamW8bit step (8-bit states: 18 bytes of traffic per parameter, not 28)",
  group: "AdamW, 16M f32 params",
  fn: () => {
    eight.step();
    device.synchronize();
  },
});

// Paging: the 128 MiB of states (m and v) out to the host pool and back, against two copies of it.
const states = Tensor.empty([(8 * N) / 4], { device }), states2 = Tensor.empty([(8 * N) / 4], { device });
Deno.bench({
  name: "copy 128 MiB twice",
  group: "paging 128 MiB of Adam states",
  baseline: true,
  fn: () => {
    copy(states2, states);
    copy(states, states2);
  },
});
Deno.bench({
  name: "page out all, then page in (inside a step)",
  group: "paging 128 MiB of Adam states",
  fn: () => {
    paged.evictAll();
    paged.step();
    device.synchronize();
  },
});
