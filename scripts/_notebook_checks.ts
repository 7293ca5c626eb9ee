/**
 * What a notebook run in the browser must show, and the judge that checks it (scripts/_browser.ts
 * records the run, scripts/notebooks.ts prints the verdict). A run fails on:
 *
 * - an error output in any cell, or a run that did not complete (timeout, page or kernel failure);
 * - stderr output (the kernel shows it as a red block; the library writes its notices to stdout there);
 * - a plotly figure in the outputs that the page did not draw as an SVG plot;
 * - a key figure: a number the notebook's text states, missing from the rendered output of the cell
 *   that measures it (and the text must still state it);
 * - a cell tagged `live-progress` whose display never updated before the cell's execute_reply;
 * - a request from the page to anywhere but the local Jupyter server (the notebooks work offline).
 *
 * @module
 */

import type { NotebookRun } from "./_browser.ts";
import { LIVE_TAG } from "./_browser.ts";

/** A number the text states and a cell's rendered output must show. */
export interface KeyFigure {
  /** The id of the cell whose output shows it. */
  cell: string;
  /** What the rendered output must contain. */
  output: string;
  /** What the notebook's markdown must state (the same figure, as the prose writes it). */
  text: string;
}

/** Per notebook, one or two figures its text states and a cell measures. */
export const KEY_FIGURES: Record<string, KeyFigure[]> = {
  "01_full_finetuning.ipynb": [
    { cell: "01-07", output: "mixed precision: 16.00 bytes per parameter", text: "16 bytes per parameter" },
    { cell: "01-14", output: "Adam states: 53.9 GB measured vs 28.0 GB claimed", text: "53.9 GB, not 28" },
  ],
  "02_lora.ipynb": [
    { cell: "02-03", output: "trainable: 65,536 of 16,777,216 base weights = 0.39%", text: "0.39%" },
    { cell: "02-08", output: "256x less", text: "256 times" },
  ],
  "03_nf4.ipynb": [
    {
      cell: "03-11",
      output: "bits per value: { nf4: 4.5, fp4: 4.5, int4: 4.5 }",
      text: "4.5 bits per value",
    },
    { cell: "03-05", output: "nf4: 16 distinct values among 16 codes", text: "16 distinct levels" },
    { cell: "03-speed-2", output: "ideal speedup at one token: 3.88x", text: "3.88x faster than bf16" },
  ],
  "04_double_quantization.ipynb": [
    { cell: "04-03", output: "4.127", text: "4.127 bits per parameter" },
    {
      cell: "04-10",
      output: "measured saving: 0.3730 bits per parameter",
      text: "0.373 _bits_ per parameter",
    },
  ],
  "05_paged_optimizers.ipynb": [
    { cell: "05-07", output: "OutOfMemoryError: Cannot allocate", text: "OutOfMemoryError" },
    { cell: "05-15", output: "identical, bit for bit", text: "bit for bit" },
  ],
  "06_qlora_end_to_end.ipynb": [
    { cell: "06-13", output: '"78,848"', text: "78,848" },
    { cell: "06-21", output: "live bytes: 0 B at the start, 0 B now", text: "the ledger is back to 0 B" },
    {
      cell: "06-gen-5",
      output: "LLaMA-2-7B: 512.00 KiB per token, 2.00 GiB at 4,096 tokens",
      text: "2 GiB at 4,096\ntokens",
    },
  ],
};

/** The markdown of a notebook file, all cells joined. */
export function notebookText(nb: { cells: { cell_type: string; source: string | string[] }[] }): string {
  return nb.cells.filter((c) => c.cell_type === "markdown").map((c) => [c.source].flat().join("")).join(
    "\n",
  );
}

/**
 * The problems of one run, as sentences naming the cell ("" cells when the notebook itself); empty when
 * it passed.
 *
 * @example
 * ```ts
 * import { judge } from "./_notebook_checks.ts";
 * import { assertEquals } from "@std/assert";
 * const run = { name: "x.ipynb", seconds: 1, external: [], notebook: {}, failure: null, cells: [] };
 * assertEquals(judge(run, { cells: [] }, []), []);
 * ```
 */
export function judge(
  run: NotebookRun,
  source: {
    cells: { cell_type: string; id?: string; source: string | string[]; metadata?: { tags?: string[] } }[];
  },
  keyFigures: KeyFigure[] = KEY_FIGURES[run.name] ?? [],
): string[] {
  const problems: string[] = [];
  if (run.failure) problems.push(`the run did not complete: ${run.failure}`);
  for (const c of run.cells) {
    if (c.error) problems.push(`cell ${c.id}: error output:\n${c.error}`);
    if (c.stderr.trim()) {
      problems.push(`cell ${c.id}: stderr output (a red block in Jupyter): ${c.stderr.trim()}`);
    }
    if (c.drawn < c.figures) {
      problems.push(
        `cell ${c.id}: ${c.figures - c.drawn} of ${c.figures} plotly figures not drawn in the page`,
      );
    }
  }
  const byId = new Map(run.cells.map((c) => [c.id, c]));
  const squash = (t: string) => t.replace(/\s+/g, " ");
  const text = squash(notebookText(source));
  for (const k of keyFigures) {
    if (!text.includes(squash(k.text))) {
      problems.push(`the text no longer states "${k.text}" (key figure of cell ${k.cell})`);
    }
    const cell = byId.get(k.cell);
    if (!cell) problems.push(`cell ${k.cell}: not found or not run (key figure "${k.output}")`);
    else if (!squash(cell.text).includes(squash(k.output))) {
      problems.push(`cell ${k.cell}: key figure "${k.output}" missing from its rendered output`);
    }
  }
  for (const c of source.cells) {
    if (c.cell_type !== "code" || !c.metadata?.tags?.includes(LIVE_TAG)) continue;
    const cell = byId.get(c.id ?? "");
    if (cell && !cell.error && cell.updatesBeforeReply < 1) {
      problems.push(`cell ${c.id}: tagged ${LIVE_TAG}, but its display never updated while it ran`);
    }
  }
  for (const u of run.external) problems.push(`the page requested ${u} (notebooks must work offline)`);
  return problems;
}

/** The MIME type of a plotly figure in a notebook's outputs. */
const PLOTLY_MIME = "application/vnd.plotly.v1+json";

/** A cell of an executed notebook file, as much as {@linkcode missingFigures} reads. */
export interface ExecutedCell {
  cell_type: string;
  id?: string;
  source: string | string[];
  outputs?: { output_type: string; data?: Record<string, unknown> }[];
}

/**
 * The cells of an executed notebook that call `show(` more times than they have plotly outputs, as
 * sentences: a figure the notebook displays but the file lost (Deno's kernel can publish it after the
 * cell's `idle`, and a plain nbclient stops listening there). Comments are not counted.
 *
 * @example
 * ```ts
 * import { missingFigures } from "./_notebook_checks.ts";
 * import { assertEquals } from "@std/assert";
 * const fig = { output_type: "display_data", data: { "application/vnd.plotly.v1+json": {} } };
 * const cell = (outputs: typeof fig[]) => ({ cell_type: "code", id: "c1", source: "await show(plot([]));", outputs });
 * assertEquals(missingFigures({ cells: [cell([fig])] }), []);
 * assertEquals(missingFigures({ cells: [cell([])] }), ["cell c1: 1 of 1 figures shown with show() missing from the file"]);
 * ```
 */
export function missingFigures(nb: { cells: ExecutedCell[] }): string[] {
  const problems: string[] = [];
  nb.cells.forEach((c, i) => {
    if (c.cell_type !== "code") return;
    const code = [c.source].flat().join("").replace(/\/\/.*$/gm, "");
    const shown = code.match(/\bshow\(/g)?.length ?? 0;
    const found = (c.outputs ?? []).filter((o) => o.data !== undefined && PLOTLY_MIME in o.data).length;
    if (found < shown) {
      problems.push(
        `cell ${c.id ?? i}: ${shown - found} of ${shown} figures shown with show() missing from the file`,
      );
    }
  });
  return problems;
}
