/**
 * `./deno task table [--model tiny|7b|13b|70b] [--layers N] [--seq N] [--batch N] [--steps N]
 * [--budget 6GiB] [--json] [--out DIR] [--max-seconds S] [--base WEIGHTS] [--pretrain-steps N] [--no-quality]
 * [--quality-seeds N] [--quality-steps N] [--readme] [--readme-from FILE]`:
 * measures what full fine-tuning, LoRA and QLoRA cost and deliver, and prints the comparison table (with
 * measured values), the table of claims checked against the measurements and the quality table; writes
 * `DIR/report.html` (offline, plotly.js inlined) and `DIR/table.json`. `--readme` also rewrites README.md's
 * table section from the run (and saves the run to tests/data/readme_table.json; see table/readme.ts);
 * `--readme-from FILE` rebuilds that section from a saved run with the current formatters, running nothing.
 *
 * Two scales and a study:
 * - tiny: the tiny LLaMA pretrained on the Brown corpus (loaded from `--base` when it exists with the
 *   tiny config, else pretrained for `--pretrain-steps`, and saved there when no file exists; `--base none`
 *   neither loads nor saves), then fine-tuned on State of the Union addresses in each mode for
 *   `--steps` steps (default 40; batch 8, seq 128): loss, tokens/s, ledger.
 * - the real shapes of `--model` (default 7b) with synthetic weights, one step of (`--batch`, `--seq`):
 *   every mode is measured on 1- and N-block real-size models (`--layers N`, default 2) and extrapolated
 *   linearly to the real layer count; then the whole model is measured (QLoRA first, then LoRA, full)
 *   where the memory of this machine and the time limit (`--max-seconds`, default 600) allow it. With
 *   `--model tiny` only the tiny scale runs, and `--seq`/`--batch` apply to it.
 * - quality (lib/lab/quality.ts; skipped with `--no-quality`): the pretrained tiny base with its linear
 *   weights in bf16, NF4, NF4 + double quantization, FP4 and Int4; held-out SOTU perplexity before and after
 *   LoRA/QLoRA fine-tuning (one learning rate chosen by a small sweep; `--quality-seeds` seeds, default 3,
 *   of `--quality-steps` steps, default 30), mean +- std, differences weighed against the seed spread.
 *
 * The code: table/types.ts (result types), table/tiny.ts, table/shape.ts, table/constants.ts,
 * table/run.ts (all of them), table/comparison.ts, table/claims.ts,
 * table/quality_table.ts (the tables), table/format.ts, table/report_html.ts, table/readme.ts (renderings).
 *
 * Every memory figure comes from the ledger; the estimator (lib/estimate/estimate.ts) stands beside it. Progress
 * goes to stderr, the tables to stdout (`--json`: the whole result as JSON). The command sets
 * `OMP_WAIT_POLICY=passive` unless it is set: on a shared machine, spinning OpenMP threads slow small
 * ops down tenfold.
 *
 * @module
 */

import { DEFAULT_QUALITY, parseBytes, writeFileAtomic } from "../mod.ts";
import { helpText, intFlags, parseArgs, runMain, UsageError } from "./_cli.ts";
import { toMarkdown } from "./table/format.ts";
import { writeReport } from "./table/report_html.ts";
import { README_RESULT, rewriteReadme, writeReadme } from "./table/readme.ts";
import { runTable } from "./table/run.ts";
import { DEFAULT_OPTIONS, type TableOptions } from "./table/types.ts";

export type {
  ConstantsMeasurement,
  Measurement,
  Precisions,
  ShapeCell,
  ShapeName,
  ShapeResult,
  TableOptions,
  TableResult,
  TinyResult,
  TinyRun,
  Variant,
} from "./table/types.ts";
export { DEFAULT_OPTIONS, VARIANT_LABELS, VARIANTS } from "./table/types.ts";
export { precisionsOf } from "./table/common.ts";
export { extrapolate } from "./table/shape.ts";
export { runTable } from "./table/run.ts";

const USAGE = helpText("./deno task table [--model tiny|7b|13b|70b] [options]", [
  [
    "--model tiny|7b|13b|70b",
    "real shapes measured beside the tiny model (tiny: tiny scale only); default 7b",
  ],
  ["--layers N", "real-size blocks of the larger partial model (the fit uses 1 and N); default 2"],
  [
    "--seq N",
    "seq of the real-shape step (of the tiny runs with --model tiny); default 64 (tiny: 128)",
  ],
  ["--batch N", "batch of the real-shape step (of the tiny runs with --model tiny); default 1 (tiny: 8)"],
  ["--steps N", "fine-tuning steps per mode at the tiny scale; default 40"],
  ["--budget SIZE", "a device memory budget such as 6GiB: the table says what fits it; default none"],
  ["--max-seconds S", "whole-model runs start only when projected to end within S seconds; default 600"],
  [
    "--base WEIGHTS|none",
    "the tiny base, made when missing (none: neither); default build/tiny-base.safetensors",
  ],
  ["--pretrain-steps N", "pretraining steps on Brown when there is no base to load; default 300"],
  ["--prefill N,N...", "prompt lengths of the prefill figures (batch 1); default 64,512"],
  ["--decode-steps N", "decode steps timed after the first prompt length; default 8"],
  [
    "--no-quality",
    "skip the quality study (perplexity per weight format); default off",
  ],
  ["--quality-seeds N", "seeds of the quality study; default 3"],
  ["--quality-steps N", "fine-tuning steps of each quality run; default 30"],
  ["--out DIR", "where report.html and table.json go; default build/report"],
  ["--json", "print the whole result as JSON instead of the tables; default off"],
  [
    "--readme",
    "also rewrite README.md's table (the run to tests/data/readme_table.json); default off",
  ],
  ["--readme-from FILE", "rebuild README.md's table section from a saved run, running nothing; default none"],
], [
  "Every memory figure comes from the ledger. Progress goes to stderr, the tables to stdout.",
]);

if (import.meta.main) {
  // On a shared machine, OpenMP threads that spin while waiting slow each other down tenfold on small ops;
  // sleeping threads cost a little on an idle machine. Read by the native library when it loads.
  if (!Deno.env.get("OMP_WAIT_POLICY")) Deno.env.set("OMP_WAIT_POLICY", "passive");
  await runMain(async () => {
    const { flags, positional } = parseArgs(Deno.args, {
      model: "string",
      layers: "string",
      seq: "string",
      batch: "string",
      steps: "string",
      budget: "string",
      json: "boolean",
      out: "string",
      "max-seconds": "string",
      base: "string",
      "pretrain-steps": "string",
      "no-quality": "boolean",
      "quality-seeds": "string",
      "quality-steps": "string",
      prefill: "string",
      "decode-steps": "string",
      readme: "boolean",
      "readme-from": "string",
    });
    if (positional.length) throw new UsageError(`unexpected argument ${positional[0]}`);
    if (flags["readme-from"]) {
      await rewriteReadme("README.md", flags["readme-from"] as string);
      console.log(`README.md's table section rebuilt from ${flags["readme-from"]}`);
      return;
    }
    const model = (flags.model ?? "7b") as TableOptions["model"];
    if (!["tiny", "7b", "13b", "70b"].includes(model)) {
      throw new UsageError("--model must be tiny, 7b, 13b or 70b");
    }
    const int = intFlags(flags);
    const tiny = model === "tiny";
    const options: TableOptions = {
      model,
      layers: int("layers", DEFAULT_OPTIONS.layers),
      seq: int("seq", tiny ? 128 : DEFAULT_OPTIONS.seq),
      batch: int("batch", tiny ? 8 : DEFAULT_OPTIONS.batch),
      steps: int("steps", DEFAULT_OPTIONS.steps),
      budget: flags.budget ? parseBytes(flags.budget as string) : 0,
      maxSeconds: int("max-seconds", DEFAULT_OPTIONS.maxSeconds),
      base: flags.base === "none" ? null : (flags.base as string | undefined) ?? DEFAULT_OPTIONS.base,
      pretrainSteps: int("pretrain-steps", DEFAULT_OPTIONS.pretrainSteps),
      prefill: flags.prefill === undefined
        ? DEFAULT_OPTIONS.prefill
        : String(flags.prefill).split(",").map((v) => {
          const n = Number(v);
          if (!Number.isSafeInteger(n) || n <= 0) {
            throw new UsageError(`--prefill: ${v} is not a positive integer`);
          }
          return n;
        }),
      decodeSteps: int("decode-steps", DEFAULT_OPTIONS.decodeSteps),
      quality: flags["no-quality"] ? null : {
        ...DEFAULT_QUALITY,
        seeds: int("quality-seeds", DEFAULT_QUALITY.seeds),
        steps: int("quality-steps", DEFAULT_QUALITY.steps),
      },
    };
    const out = (flags.out as string | undefined) ?? "build/report";
    const result = await runTable(options);
    await Deno.mkdir(out, { recursive: true });
    const report = `${out}/report.html`;
    await writeReport(result, report);
    await writeFileAtomic(`${out}/table.json`, JSON.stringify(result, null, 2) + "\n");
    if (flags.readme) await writeReadme(result, "README.md", README_RESULT);
    if (flags.json) {
      console.log(JSON.stringify(result, null, 2));
    } else {
      console.log(toMarkdown(result.comparison));
      console.log();
      console.log(toMarkdown(result.claims));
      console.log();
      if (result.qualityTable) {
        console.log(toMarkdown(result.qualityTable));
        console.log();
      }
      console.log(`${result.seconds.toFixed(0)} s on ${result.device}; report: ${report}`);
    }
  }, USAGE);
}
