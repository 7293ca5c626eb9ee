/**
 * The judge of the browser run (scripts/_notebook_checks.ts), on made-up runs: each kind of failure the
 * browser test must catch is caught, and a clean run passes.
 */
import { assert, assertEquals } from "@std/assert";
import type { CellReport, NotebookRun } from "../scripts/_browser.ts";
import { judge, KEY_FIGURES } from "../scripts/_notebook_checks.ts";

const cell = (over: Partial<CellReport> = {}): CellReport => ({
  id: "x-01",
  tags: [],
  error: null,
  stderr: "",
  text: "saved: 0.3730 bits per parameter",
  figures: 1,
  drawn: 1,
  updatesBeforeReply: 0,
  seconds: 1,
  ...over,
});
const run = (cells: CellReport[], over: Partial<NotebookRun> = {}): NotebookRun => ({
  name: "x.ipynb",
  seconds: 1,
  cells,
  external: [],
  notebook: {},
  failure: null,
  ...over,
});
const source = (tags: string[] = []) => ({
  cells: [
    { cell_type: "markdown", source: ["It saves 0.373 bits\n", "per parameter.\n"] },
    { cell_type: "code", id: "x-01", source: "f();\n", metadata: { tags } },
  ],
});
const keys = [{ cell: "x-01", output: "0.3730 bits per parameter", text: "0.373 bits per parameter" }];

Deno.test("notebook checks: a clean run passes (key figure across a line break of the text)", () => {
  assertEquals(judge(run([cell()]), source(), keys), []);
});

Deno.test("notebook checks: each failure is reported, naming the cell", () => {
  const cases: [NotebookRun, ReturnType<typeof source>, RegExp][] = [
    [run([cell({ error: "TypeError: x is not a function" })]), source(), /x-01: error output/],
    [run([cell({ stderr: "boom" })]), source(), /x-01: stderr output/],
    [run([cell({ drawn: 0 })]), source(), /1 of 1 plotly figures not drawn/],
    [run([cell({ text: "saved: 0.5 bits" })]), source(), /key figure "0.3730 bits per parameter" missing/],
    [run([cell()]), { cells: [source().cells[1]] }, /the text no longer states/],
    [run([]), source(), /x-01: not found or not run/],
    [run([cell()]), source(["live-progress"]), /never updated while it ran/],
    [
      run([cell()], { external: ["https://cdn.example/mathjax.js"] }),
      source(),
      /notebooks must work offline/,
    ],
    [run([cell()], { failure: "timed out" }), source(), /did not complete: timed out/],
  ];
  for (const [r, s, expected] of cases) {
    const problems = judge(r, s, keys);
    assert(problems.some((p) => expected.test(p)), `${expected}: got ${JSON.stringify(problems)}`);
  }
  assertEquals(judge(run([cell({ updatesBeforeReply: 2 })]), source(["live-progress"]), keys), []);
});

Deno.test("notebook checks: every notebook has key figures, each stated in its text", () => {
  const dir = new URL("../notebooks/", import.meta.url);
  const names = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => n.endsWith(".ipynb")).sort();
  assertEquals(Object.keys(KEY_FIGURES).sort(), names);
  for (const name of names) {
    const nb = JSON.parse(Deno.readTextFileSync(new URL(name, dir)));
    const ids = new Set(nb.cells.map((c: { id: string }) => c.id));
    const problems = judge(run([]), nb).filter((p) => /no longer states/.test(p));
    assertEquals(problems, [], name);
    for (const k of KEY_FIGURES[name]) assert(ids.has(k.cell), `${name}: no cell ${k.cell}`);
  }
});
