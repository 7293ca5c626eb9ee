import { assert, assertAlmostEquals, assertEquals } from "@std/assert";
import { learningRate } from "../mod.ts";

Deno.test("learningRate: warm-up rises, then the cosine falls monotonically to the floor", () => {
  const lrs = Array.from({ length: 50 }, (_, s) => learningRate(s, 50, 5, 2e-3, 0.1));
  for (let s = 1; s < 5; s++) assert(lrs[s] > lrs[s - 1], `warm-up at ${s}`);
  assertEquals(lrs[5], 2e-3);
  for (let s = 6; s < 50; s++) assert(lrs[s] <= lrs[s - 1], `decay at ${s}`);
  assertAlmostEquals(lrs[49], 2e-4, 1e-15);
  assertEquals(learningRate(3, 3, 0, 1, 0.5), 0.5, "past the end: the floor");
});
