/**
 * Inference in `./deno task table`: generation with a KV cache at batch 1, where inference really lives.
 * A prefill (the prompt through the model at once: compute-bound, like a training forward pass) at two
 * prompt lengths, and decode steps (one token at a time against the growing cache: memory-bound, every
 * weight read once per token), timed by the library's own `Generation.stats`; the ledger's peaks over the
 * longest prefill, its cache included.
 *
 * @module
 */

import type { Device, LlamaModel } from "../../mod.ts";
import type { InferenceTimes } from "./types.ts";

function prompt(n: number, vocab: number): number[] {
  return Array.from({ length: n }, (_, i) => (i * 7919 + 13) % vocab);
}

/**
 * Times generation on `model` as it is (a LoRA model merged or not, as the caller set it): a warm-up,
 * then `reps` runs of each figure, the fastest counting (the least disturbed by other work): a prefill per
 * prompt length of `o.prefill`, and `o.decodeSteps` decode steps after the first. Greedy tokens, batch 1.
 */
export async function measureGeneration(
  model: LlamaModel,
  device: Device,
  o: { prefill: readonly number[]; decodeSteps: number },
  reps: number,
): Promise<InferenceTimes> {
  const vocab = model.config.vocabSize, steps = o.decodeSteps;
  const lengths = o.prefill.map((n) => Math.min(n, model.config.maxSeq - steps - 1));
  await model.generate(prompt(lengths[0], vocab), { maxNewTokens: 3 }).collect(); // warm-up: first touches
  const prefill = lengths.map((tokens) => ({ tokens, seconds: Infinity }));
  let decodeSeconds = Infinity;
  for (let r = 0; r < reps; r++) {
    const g = model.generate(prompt(lengths[0], vocab), { maxNewTokens: 1 + steps });
    await g.collect();
    prefill[0].seconds = Math.min(prefill[0].seconds, g.stats!.prefillSeconds);
    decodeSeconds = Math.min(decodeSeconds, g.stats!.decodeSeconds / g.stats!.decodeSteps);
  }
  let bytes = device.memory().peak, cacheRows = 0;
  for (let i = 1; i < lengths.length; i++) {
    for (let r = 0; r < reps; r++) {
      device.resetPeak();
      const g = model.generate(prompt(lengths[i], vocab), { maxNewTokens: 1 });
      await g.collect();
      prefill[i].seconds = Math.min(prefill[i].seconds, g.stats!.prefillSeconds);
      bytes = { ...device.memory().peak };
      cacheRows = g.stats!.cacheCapacity;
    }
  }
  return { prefill, decodeSeconds, decodeSteps: steps, bytes, cacheRows };
}
