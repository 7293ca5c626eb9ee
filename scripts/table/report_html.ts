/**
 * The offline HTML report of `./deno task table`: plotly figures (memory by category, memory against model
 * size, loss curves) and both tables, plotly.js inlined.
 *
 * @module
 */

import {
  CATEGORIES,
  type Category,
  estimateMemory,
  type Figure,
  lineChart,
  LLAMA_CONFIGS,
  plot,
  type PlotlyTrace,
  writeFileAtomic,
} from "../../mod.ts";
import { esc, TAGS, toHTMLTable } from "./format.ts";
import type { TableInput, TableResult, Variant } from "./types.ts";

const SHORT: Record<Variant, string> = {
  full: "Full (bf16 + f32 Adam)",
  "full-mixed": "Full (mixed precision)",
  lora: "LoRA",
  qlora: "QLoRA",
};

/** The report's figures: memory by category, memory against model size, loss curves. */
export function reportFigures(r: TableInput): Figure[] {
  const figs: Figure[] = [];
  const stack = (
    title: string,
    labels: string[],
    bytes: Record<Category, number>[],
    unit: number,
    u: string,
  ) =>
    plot(
      CATEGORIES.map((c) => ({ type: "bar", name: c, x: labels, y: bytes.map((b) => b[c] / unit) })),
      { title: { text: title }, barmode: "stack", yaxis: { title: { text: u } }, height: 460 },
    );
  if (r.shape) {
    const shape = r.shape;
    const vs = (["full", "full-mixed", "lora", "qlora"] as Variant[]).filter((v) => shape.cells[v].value);
    const labels = vs.map((v) => `${SHORT[v]} [${TAGS[shape.cells[v].how]}]`);
    figs.push(
      stack(
        `Memory by category, LLaMA-2-${shape.name.toUpperCase()} shapes, ${shape.batch}x${shape.seq} tokens (ledger)`,
        labels,
        vs.map((v) => shape.cells[v].value!.bytes),
        1e9,
        "GB",
      ),
    );
  }
  const tinyRuns = r.tiny.runs.filter((t) => !t.oom);
  figs.push(
    stack(
      `Memory by category, tiny model, ${r.tiny.batch}x${r.tiny.seq} tokens (ledger)`,
      tinyRuns.map((t) => t.mode),
      tinyRuns.map((t) => t.bytes),
      1e6,
      "MB",
    ),
  );
  // Memory against model size: the estimator for each size, the measurement where it ran.
  const sizes = ["7b", "13b", "70b"] as const;
  const seq = r.shape?.seq ?? 64, batch = r.shape?.batch ?? 1;
  const traces: PlotlyTrace[] = [];
  for (const v of ["full", "full-mixed", "lora", "qlora"] as Variant[]) {
    const params = sizes.map((s) =>
      estimateMemory(LLAMA_CONFIGS[s], { mode: "full", seq: 1, batch: 1 }).parameters / 1e9
    );
    const est = sizes.map((s) =>
      estimateMemory(LLAMA_CONFIGS[s], {
        mode: v === "full-mixed" ? "full" : v,
        seq,
        batch,
        masterWeights: v !== "full",
      })
        .peak / 1e9
    );
    traces.push({
      type: "scatter",
      mode: "lines+markers",
      name: `${SHORT[v]} (estimate)`,
      x: params,
      y: est,
    });
    const cell = r.shape?.cells[v];
    if (cell?.value) {
      traces.push({
        type: "scatter",
        mode: "markers",
        marker: { size: 14, symbol: cell.how === "whole" ? "circle-open" : "diamond-open" },
        name: `${SHORT[v]} (${TAGS[cell.how]})`,
        x: [cell.value.parameters / 1e9],
        y: [cell.value.totalPeak / 1e9],
      });
    }
  }
  traces.push({
    type: "scatter",
    mode: "lines",
    name: "6 GiB (RTX 3060)",
    line: { dash: "dot", color: "gray" },
    x: [5, 75],
    y: [6 * 2 ** 30 / 1e9, 6 * 2 ** 30 / 1e9],
  });
  figs.push(
    plot(traces, {
      title: { text: `Peak training memory against model size (${batch}x${seq} tokens)` },
      xaxis: { title: { text: "parameters (billions)" }, type: "log" },
      yaxis: { title: { text: "GB" }, type: "log" },
      height: 480,
    }),
  );
  if (tinyRuns.length && tinyRuns[0].history.length) {
    const steps = tinyRuns[0].history.map((h) => h.step);
    const series = Object.fromEntries(
      tinyRuns.map((t) => [`${t.mode} (training)`, t.history.map((h) => h.loss)]),
    );
    const fig = lineChart(steps, series, {
      title: "Fine-tuning loss on SOTU (tiny model)",
      xTitle: "step",
      yTitle: "cross-entropy (nats/token)",
    });
    for (const t of tinyRuns) {
      const ev = t.history.filter((h) => h.evalLoss !== undefined);
      fig.data.push({
        type: "scatter",
        mode: "markers",
        name: `${t.mode} (validation)`,
        x: [0, ...ev.map((h) => h.step)],
        y: [t.lossBefore, ...ev.map((h) => h.evalLoss!)],
      });
    }
    figs.push(fig);
  }
  return figs;
}

/** Writes the offline HTML report (plotly.js inlined once) with the figures and both tables. */
export async function writeReport(r: TableResult, path: string): Promise<void> {
  const figs = reportFigures(r);
  const parts: string[] = [];
  for (let i = 0; i < figs.length; i++) parts.push(await figs[i].toHTML({ includePlotlyJs: i === 0 }));
  const html = `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>qlora-lab: full fine-tuning vs LoRA vs QLoRA</title>
<style>
body { font-family: sans-serif; margin: 2em; max-width: 1400px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }
tr > th:first-child { background: #f4f4f4; }
</style></head><body>
<h1>Full fine-tuning vs LoRA vs QLoRA, measured</h1>
<p>${esc(r.device)}; run took ${r.seconds.toFixed(0)} s. Every memory figure is from the ledger of the native
library (bytes really allocated), beside the analytic estimate.</p>
${toHTMLTable(r.comparison)}
${toHTMLTable(r.claims)}
${r.qualityTable ? toHTMLTable(r.qualityTable) : ""}
${parts.join("\n")}
</body></html>
`;
  await writeFileAtomic(path, html);
}
