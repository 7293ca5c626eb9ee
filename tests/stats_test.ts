import { assert, assertAlmostEquals, assertEquals, assertThrows } from "@std/assert";
import { compare, fmtSpread, spread } from "../mod.ts";

Deno.test("quality stats: mean and sample standard deviation", () => {
  const s = spread([7.1, 7.3, 7.2]);
  assertAlmostEquals(s.mean, 7.2, 1e-12);
  assertAlmostEquals(s.std, 0.1, 1e-12); // n - 1, not n (that would be 0.0816)
  assertEquals(spread([5]), { mean: 5, std: 0, n: 1 });
  assertThrows(() => spread([]), RangeError, "no values");
  assertThrows(() => spread([1, NaN]), RangeError, "not finite");
  assertEquals(fmtSpread(spread([1, 3])), "2.000 +- 1.414");
});

Deno.test("quality stats: a difference counts only when larger than the seed spread", () => {
  const a = [7.0, 7.1, 7.2]; // std 0.1
  const far = compare(a, [7.5, 7.6, 7.7]);
  assertAlmostEquals(far.diff, 0.5, 1e-12);
  assertAlmostEquals(far.spread, 0.2, 1e-12);
  assert(far.resolved);
  const near = compare(a, [7.15, 7.25, 7.35]); // 0.15 < 0.2
  assert(!near.resolved);
  assert(near.pairedResolved, "the same shift for every seed is resolved when paired");
  const mixed = compare(a, [7.3, 7.0, 7.2]); // per-seed differences +0.3, -0.1, 0: no consistent shift
  assert(!mixed.resolved && !mixed.pairedResolved);
  const single = compare([7], [9]);
  assert(!single.resolved, "one seed has no measured spread: never resolved");
  assertEquals(compare([1, 2], [1, 2, 3]).paired, null);
});
