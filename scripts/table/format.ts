/**
 * Formatting of the tables of `./deno task table`: bytes, counts, percentages, tokens per second, the
 * how-obtained tags, and Markdown and HTML renderings of a {@linkcode Table}.
 *
 * @module
 */

import type { ShapeCell, Table } from "./types.ts";

/** "13.48 GB", "40.0 MB", "512 kB" (decimal units, as the claims use). */
export function fmtBytes(bytes: number): string {
  const a = Math.abs(bytes);
  if (a >= 1e9) return `${(bytes / 1e9).toFixed(2)} GB`;
  if (a >= 1e6) return `${(bytes / 1e6).toFixed(1)} MB`;
  if (a >= 1e3) return `${(bytes / 1e3).toFixed(0)} kB`;
  return `${bytes} B`;
}

export function fmtCount(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return String(n);
}

export function pct(x: number, digits = 1): string {
  return `${(100 * x).toFixed(digits)}%`;
}

export function signedPct(measured: number, estimate: number): string {
  if (estimate === 0) return measured === 0 ? "=" : "n/a";
  const d = (measured - estimate) / estimate;
  return `${d >= 0 ? "+" : ""}${(100 * d).toFixed(1)}%`;
}

export function tps(x: number): string {
  return x >= 100 ? `${Math.round(x).toLocaleString("en-US")} tok/s` : `${x.toFixed(1)} tok/s`;
}

/** One column of the comparison table: figures at the main scale. */
export const TAGS: Record<ShapeCell["how"], string> = {
  whole: "whole",
  extrapolated: "extrapolated",
  "does not fit": "does not fit",
  "not run": "not run",
};

const escapeMd = (s: string) => s.replace(/\|/g, "\\|");

/** A markdown table with its title and notes. */
export function toMarkdown(t: Table): string {
  const lines = [`## ${t.title}`, "", `| ${t.headers.map(escapeMd).join(" | ")} |`];
  lines.push(`| ${t.headers.map(() => "---").join(" | ")} |`);
  for (const row of t.rows) lines.push(`| ${row.map(escapeMd).join(" | ")} |`);
  if (t.notes.length) lines.push("", ...t.notes.map((n) => `- ${n}`));
  return lines.join("\n");
}

export const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/** An HTML table with its title and notes. */
export function toHTMLTable(t: Table): string {
  const head = `<tr>${t.headers.map((h) => `<th>${esc(h)}</th>`).join("")}</tr>`;
  const body = t.rows.map((r) =>
    `<tr>${r.map((c, i) => (i === 0 ? `<th>${esc(c)}</th>` : `<td>${esc(c)}</td>`)).join("")}</tr>`
  ).join("\n");
  const notes = t.notes.length ? `<ul>${t.notes.map((n) => `<li>${esc(n)}</li>`).join("")}</ul>` : "";
  return `<h2>${esc(t.title)}</h2>\n<table>${head}\n${body}</table>\n${notes}`;
}
