/**
 * The README's charts as plain SVG files, drawn from a saved table run (`tests/data/readme_table.json`): the
 * key chart, the ledger's peak bytes by category of one training step of LLaMA-2-7B in full fine-tuning,
 * LoRA and QLoRA, one stacked bar per mode on one linear scale; and the speed chart, QLoRA against LoRA. Written by `./deno task table --readme` (and
 * `--readme-from`) beside the README's table section; `tests/table_readme_test.ts` fails when a
 * committed file differs from what this module draws from the saved run. No browser and no plotting
 * library: the same bytes on every machine.
 *
 * @module
 */

import { CATEGORIES, type Category } from "../../mod.ts";
import type { ShapeCell, TableResult } from "./types.ts";

/** The modes drawn, top to bottom, with their labels. */
const BARS: readonly { variant: "full" | "lora" | "qlora"; label: string }[] = [
  { variant: "full", label: "Full fine-tuning" },
  { variant: "lora", label: "LoRA (bf16 base)" },
  { variant: "qlora", label: "QLoRA (NF4 base)" },
];

/** One color per ledger category (the notebooks' palette). */
const COLORS: Readonly<Record<Category, string>> = {
  weights: "#4c78a8",
  quantized_weights: "#72b7b2",
  quant_constants: "#54a24b",
  adapters: "#eeca3b",
  gradients: "#f58518",
  optimizer_states: "#e45756",
  activations: "#b279a2",
  workspace: "#9d755d",
  kv_cache: "#bab0ac",
};

const GiB = 2 ** 30;

function escape(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

/** The opening lines of a chart: the element, a white background and the bold title. */
function svgOpen(width: number, height: number, titleX: number, title: string): string[] {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" ` +
    `font-family="Helvetica, Arial, sans-serif" font-size="13">`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="${titleX}" y="22" font-size="15" font-weight="bold">${escape(title)}</text>`,
  ];
}

/** The cell's peak bytes per category, and whether it was measured whole or extrapolated. */
function barOf(cell: ShapeCell | undefined): { bytes: Record<Category, number>; how: string } | null {
  if (!cell?.value) return null;
  return { bytes: cell.value.bytes, how: cell.how === "whole" ? "measured whole" : "extrapolated" };
}

/**
 * The chart's SVG text for a table run's 7B shapes (an empty-chart note where the run measured none).
 *
 * @example
 * ```ts
 * import { memoryChartSvg } from "./chart_svg.ts";
 * import { assertStringIncludes } from "@std/assert";
 * const saved = JSON.parse(Deno.readTextFileSync("tests/data/readme_table.json"));
 * assertStringIncludes(memoryChartSvg(saved.result), "QLoRA (NF4 base)");
 * ```
 */
export function memoryChartSvg(result: TableResult): string {
  const cells = result.shape?.cells;
  const bars = BARS.map((b) => ({ ...b, bar: barOf(cells?.[b.variant]) }));
  const tokens = cells?.qlora?.value?.tokens ?? result.options.seq;
  const width = 880, left = 150, right = 110, top = 62, barHeight = 34, gap = 16;
  const plotWidth = width - left - right;
  const totals = bars.map((b) => b.bar ? CATEGORIES.reduce((s, c) => s + b.bar!.bytes[c], 0) : 0);
  const maxGiB = Math.max(8, Math.ceil(Math.max(...totals) / GiB / 10) * 10);
  const x = (bytes: number) => left + (bytes / GiB / maxGiB) * plotWidth;
  const used = CATEGORIES.filter((c) => bars.some((b) => (b.bar?.bytes[c] ?? 0) > 0));
  const axisY = top + bars.length * (barHeight + gap) + 8;
  const legendTop = axisY + 34;
  const height = legendTop + Math.ceil(used.length / 5) * 22 + 4;
  const out = svgOpen(
    width,
    height,
    left,
    `One training step of LLaMA-2-7B (${tokens} tokens): the ledger's peak bytes by category`,
  );
  // Grid lines every 10 GiB (or 2 GiB on a small scale), and the 6 GB card of the seed document.
  const step = maxGiB > 20 ? 10 : 2;
  for (let g = 0; g <= maxGiB; g += step) {
    const gx = x(g * GiB).toFixed(1);
    out.push(`<line x1="${gx}" y1="${top - 6}" x2="${gx}" y2="${axisY - 4}" stroke="#dddddd"/>`);
    out.push(`<text x="${gx}" y="${axisY + 10}" text-anchor="middle" fill="#555555">${g} GiB</text>`);
  }
  const cardX = x(6e9), card = cardX.toFixed(1);
  out.push(
    `<line x1="${card}" y1="${top - 12}" x2="${card}" y2="${
      axisY - 4
    }" stroke="#333333" stroke-dasharray="4 3"/>`,
    `<text x="${card}" y="${top - 17}" text-anchor="middle" fill="#333333">6 GB (an RTX 3060)</text>`,
  );
  bars.forEach((b, i) => {
    const y = top + i * (barHeight + gap);
    out.push(
      `<text x="${left - 8}" y="${y + barHeight / 2 + 5}" text-anchor="end">${escape(b.label)}</text>`,
    );
    if (!b.bar) {
      out.push(`<text x="${left + 6}" y="${y + barHeight / 2 + 5}" fill="#555555">not measured</text>`);
      return;
    }
    let at = 0;
    for (const c of CATEGORIES) {
      const bytes = b.bar.bytes[c];
      if (bytes <= 0) continue;
      const x0 = x(at), x1 = x(at + bytes);
      out.push(
        `<rect x="${x0.toFixed(2)}" y="${y}" width="${(x1 - x0).toFixed(2)}" height="${barHeight}" ` +
          `fill="${COLORS[c]}"><title>${c}: ${(bytes / GiB).toFixed(2)} GiB</title></rect>`,
      );
      at += bytes;
    }
    // The total after the bar, clear of the 6 GB line.
    const labelX = x(at) + 6 < cardX + 6 && x(at) + 160 > cardX ? cardX + 6 : x(at) + 6;
    out.push(
      `<text x="${labelX.toFixed(1)}" y="${y + barHeight / 2 + 5}">${(at / GiB).toFixed(1)} GiB ` +
        `<tspan fill="#555555">(${b.bar.how})</tspan></text>`,
    );
  });
  used.forEach((c, i) => {
    const lx = left + (i % 5) * 130, ly = legendTop + Math.floor(i / 5) * 22;
    out.push(`<rect x="${lx}" y="${ly - 11}" width="12" height="12" fill="${COLORS[c]}"/>`);
    out.push(`<text x="${lx + 17}" y="${ly}">${c.replace(/_/g, " ")}</text>`);
  });
  out.push("</svg>");
  return out.join("\n") + "\n";
}

/** Tokens per second of a cell's training step and generation, or null where not measured. */
function speedsOf(cell: ShapeCell | undefined): number[] | null {
  const v = cell?.value;
  if (!v?.inference || v.stepSeconds <= 0) return null;
  const prefill = v.inference.prefill.map((p) => p.tokens / p.seconds);
  return [v.tokens / v.stepSeconds, ...prefill, 1 / v.inference.decodeSeconds];
}

/**
 * The README's speed chart as SVG: QLoRA's tokens per second against LoRA's (merged adapters for
 * generation) for the training step and for generation at batch 1 (each prompt length's prefill, then the
 * decode), as ratios around 1x with both figures on each bar, from a table run's 7B shapes.
 *
 * @example
 * ```ts
 * import { speedChartSvg } from "./chart_svg.ts";
 * import { assertStringIncludes } from "@std/assert";
 * const saved = JSON.parse(Deno.readTextFileSync("tests/data/readme_table.json"));
 * assertStringIncludes(speedChartSvg(saved.result), "decode");
 * ```
 */
export function speedChartSvg(result: TableResult): string {
  const cells = result.shape?.cells;
  const q = speedsOf(cells?.qlora), l = speedsOf(cells?.lora);
  const v = cells?.qlora?.value;
  const labels = [
    `training step (${v?.tokens ?? "?"} tokens)`,
    ...(v?.inference?.prefill ?? []).map((p) => `prompt of ${p.tokens} tokens`),
    "decode, 1 token",
  ];
  const width = 880, left = 190, right = 250, top = 52, barHeight = 26, gap = 12;
  const rows = q && l && q.length === l.length ? q.map((s, i) => ({ label: labels[i], q: s, l: l[i] })) : [];
  const maxRatio = Math.max(2, ...rows.map((r) => Math.ceil(r.q / r.l)));
  const plotWidth = width - left - right;
  const x = (ratio: number) => left + (ratio / maxRatio) * plotWidth;
  const axisY = top + Math.max(rows.length, 1) * (barHeight + gap) + 4;
  const height = axisY + 30;
  const out = [
    ...svgOpen(
      width,
      height,
      left,
      "QLoRA (NF4 base) against LoRA (bf16 base, merged to generate), LLaMA-2-7B",
    ),
    `<text x="${left}" y="40" fill="#555555">tokens per second, as a ratio: right of 1x, the 4-bit model is ` +
    `faster</text>`,
  ];
  for (let g = 0; g <= maxRatio; g += 0.5) {
    const gx = x(g).toFixed(1);
    out.push(
      `<line x1="${gx}" y1="${top - 4}" x2="${gx}" y2="${axisY - 4}" stroke="${
        g === 1 ? "#333333" : "#dddddd"
      }"` +
        `${g === 1 ? ' stroke-dasharray="4 3"' : ""}/>`,
      `<text x="${gx}" y="${axisY + 10}" text-anchor="middle" fill="#555555">${g}x</text>`,
    );
  }
  if (rows.length === 0) out.push(`<text x="${left + 6}" y="${top + 18}" fill="#555555">not measured</text>`);
  rows.forEach((r, i) => {
    const y = top + i * (barHeight + gap), ratio = r.q / r.l;
    const labelX = x(ratio) + 6 < x(1) + 6 && x(ratio) + 50 > x(1) ? x(1) + 6 : x(ratio) + 6; // clear of the 1x line
    out.push(
      `<text x="${left - 8}" y="${y + barHeight / 2 + 5}" text-anchor="end">${escape(r.label)}</text>`,
      `<rect x="${left}" y="${y}" width="${(x(ratio) - left).toFixed(2)}" height="${barHeight}" ` +
        `fill="${ratio >= 1 ? "#72b7b2" : "#e45756"}"/>`,
      `<text x="${labelX.toFixed(1)}" y="${y + barHeight / 2 + 5}">${ratio.toFixed(2)}x ` +
        `<tspan fill="#555555">(${r.q.toFixed(1)} against ${r.l.toFixed(1)} tok/s)</tspan></text>`,
    );
  });
  out.push("</svg>");
  return out.join("\n") + "\n";
}
