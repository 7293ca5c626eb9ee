import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { type StepInfo, TrainingProgress } from "../mod.ts";

const JUPYTER = Symbol.for("Jupyter.display");

function step(step: number, steps: number, extra: Partial<StepInfo> = {}): StepInfo {
  return {
    step,
    steps,
    loss: 2.34567,
    lr: 1.5e-4,
    gradNorm: 0.5,
    tokensPerSecond: 1234.4,
    elapsedMs: 10,
    memory: { current: {}, peak: {}, totalCurrent: 1024, totalPeak: 3 * 1024 * 1024 },
    ...extra,
  };
}

Deno.test("TrainingProgress: one line per step, a bar filled by progress, eval when present", () => {
  const progress = new TrainingProgress("qlora");
  assertEquals(progress.line(), "qlora: not started");
  progress.update(step(5, 20));
  const line = progress.line();
  assert(
    line.startsWith(`qlora [${"#".repeat(5)}${" ".repeat(15)}] 5/20 loss 2.346 lr 1.5e-4 1234 tok/s peak `),
    line,
  );
  assert(!line.includes("eval"), line);
  progress.update(step(20, 20, { evalLoss: 1.5, evalPerplexity: Math.exp(1.5) }));
  assertStringIncludes(progress.line(), `[${"#".repeat(20)}] 20/20`);
  assertStringIncludes(progress.line(), "eval 1.500 (ppl 4.5)");
});

Deno.test("TrainingProgress renders in a notebook as text and HTML of the same line", () => {
  const progress = new TrainingProgress("lora");
  progress.update(step(1, 2));
  const bundle = (progress as unknown as Record<symbol, () => Record<string, string>>)[JUPYTER]();
  assertEquals(bundle["text/plain"], progress.line());
  assertEquals(bundle["text/html"], `<pre>${progress.line()}</pre>`);
});
