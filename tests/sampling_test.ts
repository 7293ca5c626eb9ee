// The sampler against what its options mean: greedy is the argmax, the repetition penalty divides positive
// logits and multiplies negative ones, top-k and top-p cut the candidates, and draws follow the softmax at
// the temperature (frequencies over many draws against the probabilities computed here in float64).
import { assert, assertEquals, assertThrows } from "@std/assert";
import { InvalidArgumentError, Sampler } from "../mod.ts";

const LOGITS = new Float32Array([1.0, 3.0, -0.5, 2.0, 2.5, -2.0]);

function softmax(x: number[], t: number): number[] {
  const m = Math.max(...x), e = x.map((v) => Math.exp((v - m) / t)), s = e.reduce((a, b) => a + b, 0);
  return e.map((v) => v / s);
}

function frequencies(s: Sampler, n: number, previous: number[] = []): number[] {
  const counts = new Array(LOGITS.length).fill(0);
  for (let i = 0; i < n; i++) counts[s.next(LOGITS, previous)]++;
  return counts.map((c) => c / n);
}

Deno.test("sampler: greedy picks the argmax (ties to the lowest id) and skips NaN", () => {
  assertEquals(new Sampler().next(LOGITS, []), 1);
  assertEquals(new Sampler().next(new Float32Array([0, 5, 5]), []), 1);
  assertEquals(new Sampler().next(new Float32Array([NaN, -1, -3]), []), 1);
  assertThrows(() => new Sampler().next(new Float32Array([NaN]), []), InvalidArgumentError, "NaN");
});

Deno.test("sampler: the repetition penalty divides positive logits and multiplies negative ones", () => {
  // 3.0 / 2 = 1.5 falls below 2.5; -0.5 * 2 = -1 stays below the rest.
  assertEquals(new Sampler({ repetitionPenalty: 2 }).next(LOGITS, [1, 1, 2]), 4);
  // Below 1 it favours what was seen: -2.0 * 0.5 = -1 still loses, 2.0 / 0.5 = 4 wins.
  assertEquals(new Sampler({ repetitionPenalty: 0.5 }).next(LOGITS, [3, 5]), 3);
  assertEquals([...LOGITS], [1.0, 3.0, -0.5, 2.0, 2.5, -2.0]); // the logits are not changed
});

Deno.test("sampler: draws follow the softmax at the temperature, within the sampling error", () => {
  for (const t of [0.5, 1, 2]) {
    const f = frequencies(new Sampler({ temperature: t, seed: 11 }), 20000), p = softmax([...LOGITS], t);
    // 5 standard deviations of a frequency over 20,000 draws.
    p.forEach((pi, i) =>
      assert(Math.abs(f[i] - pi) < 5 * Math.sqrt(pi * (1 - pi) / 20000) + 1e-9, `t ${t} [${i}]`)
    );
  }
});

Deno.test("sampler: top-k keeps the k most likely, top-p the smallest set reaching p, renormalised", () => {
  const k = frequencies(new Sampler({ temperature: 1, topK: 2, seed: 3 }), 20000);
  const pk = softmax([3.0, 2.5], 1);
  assertEquals(k.map((f, i) => f > 0 ? i : -1).filter((i) => i >= 0), [1, 4]);
  assert(Math.abs(k[1] - pk[0]) < 0.02 && Math.abs(k[4] - pk[1]) < 0.02);
  // Probabilities in order 1, 4, 3, 0, ...: p(1) + p(4) < 0.8 <= p(1) + p(4) + p(3).
  const p = softmax([...LOGITS], 1);
  assert(p[1] + p[4] < 0.8 && p[1] + p[4] + p[3] >= 0.8);
  const f = frequencies(new Sampler({ temperature: 1, topP: 0.8, seed: 4 }), 20000);
  assertEquals(f.map((v, i) => v > 0 ? i : -1).filter((i) => i >= 0), [1, 3, 4]);
  const mass = p[1] + p[3] + p[4];
  for (const i of [1, 3, 4]) assert(Math.abs(f[i] - p[i] / mass) < 0.02, `top-p [${i}]`);
});

Deno.test("sampler: seeded; bad options are refused by name", () => {
  const draws = (seed: number) => frequencies(new Sampler({ temperature: 1, seed }), 50);
  assertEquals(draws(5), draws(5));
  for (
    const [o, name] of [
      [{ temperature: -0.1 }, "temperature"],
      [{ temperature: Infinity }, "temperature"],
      [{ topK: 1.5 }, "topK"],
      [{ topP: 0 }, "topP"],
      [{ topP: 1.01 }, "topP"],
      [{ repetitionPenalty: 0 }, "repetitionPenalty"],
      [{ seed: 0.5 }, "seed"],
    ] as const
  ) {
    assertThrows(() => new Sampler(o), InvalidArgumentError, name);
  }
});
