/**
 * `runTable`: every experiment of `./deno task table`, then the tables built from the measurements.
 *
 * @module
 */

import { getDevice, type QualityResult, runQuality } from "../../mod.ts";
import { claimsTable } from "./claims.ts";
import { comparisonTable } from "./comparison.ts";
import { measureConstants } from "./constants.ts";
import { runShape } from "./shape.ts";
import { qualityTable } from "./quality_table.ts";
import { runTiny, type TinyInputs } from "./tiny.ts";
import type { TableOptions, TableResult } from "./types.ts";

/**
 * Runs the experiments and builds the tables (the quality table when the study runs).
 *
 * @example
 * ```ts ignore
 * import { DEFAULT_OPTIONS, runTable } from "../table.ts";
 * const r = await runTable({ ...DEFAULT_OPTIONS, model: "tiny", steps: 3, seq: 32, batch: 2, base: null,
 *   pretrainSteps: 3, quality: null });
 * console.log(r.comparison.rows.length);
 * ```
 */
export async function runTable(options: TableOptions): Promise<TableResult> {
  const started = performance.now();
  const o: TableOptions = {
    ...options,
    log: options.log ?? ((line: string) => {
      const t = ((performance.now() - started) / 1000).toFixed(0).padStart(4);
      console.error(`[${t} s] ${line}`);
    }),
  };
  const device = getDevice();
  const previousBudget = device.memory().budget;
  try {
    o.log!(`device ${device}${o.budget ? `, budget ${(o.budget / 2 ** 30).toFixed(2)} GiB` : ""}`);
    const constants = measureConstants(device);
    let quality: QualityResult | null = null, studyMs = 0;
    const q = o.quality;
    const study = q
      ? async (t: TinyInputs) => {
        const s0 = performance.now();
        quality = await runQuality(t.weights, t.config, t.sotu, { ...q, log: o.log });
        studyMs = performance.now() - s0;
      }
      : undefined;
    const tiny = await runTiny(o, device, study);
    // --max-seconds limits the experiments of the comparison table: the study's time is not counted.
    const shape = o.model === "tiny" ? null : await runShape(o, o.model, device, started + studyMs);
    const seconds = (performance.now() - started) / 1000;
    const { log: _log, ...plain } = o;
    const partial = { options: plain, device: String(device), tiny, shape, constants, quality, seconds };
    return {
      ...partial,
      comparison: comparisonTable(partial),
      claims: claimsTable(partial),
      qualityTable: quality ? qualityTable(quality) : null,
    };
  } finally {
    device.setMemoryBudget(previousBudget);
  }
}
