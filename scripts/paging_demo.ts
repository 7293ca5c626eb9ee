/**
 * `./deno task paging-demo`: a memory spike under a budget. A full fine-tuning step of a few
 * real-width layers (f32, AdamW) gets an activation spike (as a long sequence would) that does not fit
 * next to the Adam states: without paging it fails with OutOfMemoryError; with a paged AdamW the state
 * pages move to host RAM, the step succeeds, and the parameters equal (bit for bit on the CPU) those of
 * an unpaged run without a budget.
 *
 * @module
 */

import { AdamW, formatBytes, getDevice, Linear, OutOfMemoryError, PagedAdamW, Tensor } from "../mod.ts";
import { helpText, parseArgs, runMain } from "./_cli.ts";

const USAGE = helpText("./deno task paging-demo [--width N] [--layers N]", [
  ["--width N", "the layers' width: N x N weights, f32; default 1024"],
  ["--layers N", "linear layers fine-tuned in full; default 4"],
], [
  "One step with an activation spike under a budget: AdamW runs out of memory, PagedAdamW pages its states",
  "to the host and succeeds, with the parameters of an unpaged run without a budget.",
]);

await runMain(() => {
  const { flags } = parseArgs(Deno.args, { width: "string", layers: "string" });
  const width = Number(flags.width ?? 1024), depth = Number(flags.layers ?? 4), tokens = 64;
  const device = getDevice();
  const spikeBytes = 3 * depth * width * width; // 3/8 of the Adam states
  console.log(`${depth} layers of ${width} x ${width} (f32, full fine-tuning) on ${device}`);

  function run(kind: "AdamW" | "PagedAdamW" | "unlimited"): Float32Array[] | string {
    const layers = Array.from({ length: depth }, (_, i) => new Linear(width, width, { seed: i, device }));
    const Opt = kind === "PagedAdamW" ? PagedAdamW : AdamW;
    const opt = new Opt(layers.flatMap((l) => l.trainables()), { lr: 1e-3 });
    const x = Tensor.randn([tokens, width], { seed: 99, device });
    const step = (spike: number) => {
      const acts: Tensor[] = [x];
      try {
        for (const l of layers) acts.push(l.forward(acts[acts.length - 1]));
        using _extra = spike ? Tensor.empty([spike / 4], { device, category: "activations" }) : null;
        let dy = acts[acts.length - 1].clone();
        for (let i = depth - 1; i >= 0; i--) {
          const dx = layers[i].backward(dy);
          dy.dispose();
          dy = dx;
        }
        dy.dispose();
      } finally {
        for (const a of acts.slice(1)) a.dispose();
      }
      opt.step();
    };
    try {
      step(0); // warm-up: gradients and states exist now
      if (kind !== "unlimited") {
        device.setMemoryBudget(device.memory().totalCurrent + 2 * tokens * width * 4 * depth);
      }
      device.resetPeak();
      step(spikeBytes);
      const snap = device.memory();
      console.log(
        `  ${kind}: step ok, peak ${formatBytes(snap.totalPeak)}` +
          (opt instanceof PagedAdamW ? `, paging ${JSON.stringify(opt.stats())}` : ""),
      );
      return layers.map((l) => l.weight.toFloat32());
    } catch (e) {
      if (!(e instanceof OutOfMemoryError)) throw e;
      return e.message;
    } finally {
      device.setMemoryBudget(0);
      opt.dispose();
      x.dispose();
      for (const l of layers) l.dispose();
    }
  }

  console.log(`spike: ${formatBytes(spikeBytes)} of activations in one step\n`);
  const plain = run("AdamW");
  console.log(
    typeof plain === "string" ? `  AdamW: OutOfMemoryError: ${plain}` : "  AdamW: unexpectedly fit",
  );
  const paged = run("PagedAdamW");
  const free = run("unlimited");
  if (typeof paged === "string" || typeof free === "string") {
    throw new Error("the paged or unlimited run failed");
  }
  const same = paged.every((w, i) => w.every((v, j) => Object.is(v, free[i][j])));
  console.log(
    `\nparameters after the step, paged vs unpaged without a budget: ${same ? "identical" : "DIFFERENT"}`,
  );
  if (!same || typeof plain !== "string") Deno.exit(1);
}, USAGE);
