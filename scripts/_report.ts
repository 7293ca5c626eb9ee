/**
 * The tables and the HTML report of `./deno task table` (see table.ts), gathered in one place: the
 * comparison table (the seed document's rows, filled with measured values, then measured rows by ledger
 * category), the claims table, markdown and HTML renderings, and an offline report with plotly charts.
 * Each lives in its own module under `table/`.
 *
 * @module
 */

export type { Table, TableInput } from "./table/types.ts";
export { comparisonTable, MODE_COLUMNS, SEED_ROWS } from "./table/comparison.ts";
export { claimsTable } from "./table/claims.ts";
export { fmtBytes, toHTMLTable, toMarkdown } from "./table/format.ts";
export { reportFigures, writeReport } from "./table/report_html.ts";
