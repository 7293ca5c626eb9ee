/**
 * Structure of the committed notebooks: what `deno task notebooks` and `deno fmt --check` rely on.
 * Executing them is `deno task notebooks` (part of the test command); this file checks, in
 * milliseconds, the things that break CI in ways that are hard to see.
 */
import { assert, assertEquals } from "@std/assert";

const DIR = new URL("../notebooks/", import.meta.url);

interface Cell {
  cell_type: string;
  id?: string;
  source: string[] | string;
  outputs?: unknown[];
  execution_count?: number | null;
}

function notebooks(): { name: string; cells: Cell[]; metadata: Record<string, unknown> }[] {
  const out = [];
  for (const entry of Deno.readDirSync(DIR)) {
    if (!entry.name.endsWith(".ipynb")) continue;
    const nb = JSON.parse(Deno.readTextFileSync(new URL(entry.name, DIR)));
    out.push({ name: entry.name, cells: nb.cells, metadata: nb.metadata });
  }
  return out.sort((a, b) => a.name.localeCompare(b.name));
}

Deno.test("notebooks: the six walkthroughs exist and each is listed in notebooks/README.md", () => {
  const names = notebooks().map((n) => n.name);
  assertEquals(names.length, 6, `notebooks found: ${names.join(", ")}`);
  const readme = Deno.readTextFileSync(new URL("README.md", DIR));
  for (const name of names) {
    assert(readme.includes(`\`${name}\``), `${name} is missing from notebooks/README.md`);
  }
});

Deno.test("notebooks: Deno kernel, committed without outputs, importing ../mod.ts and nothing else", () => {
  for (const nb of notebooks()) {
    const spec = nb.metadata.kernelspec as { name?: string } | undefined;
    assertEquals(spec?.name, "deno", `${nb.name}: kernelspec`);
    const code = nb.cells.filter((c) => c.cell_type === "code");
    assert(code.length > 0, `${nb.name}: no code cells`);
    for (const c of code) {
      assertEquals(c.outputs ?? [], [], `${nb.name}: cell ${c.id} has committed outputs`);
      assertEquals(c.execution_count ?? null, null, `${nb.name}: cell ${c.id} has an execution count`);
    }
    const source = code.map((c) => [c.source].flat().join("")).join("\n");
    assert(source.includes(`"../mod.ts"`), `${nb.name}: does not import ../mod.ts`);
    // Data flows one way: a notebook uses the library through mod.ts, never lib/ or scripts/ directly.
    const specifiers = [...source.matchAll(/(?:from|import)\s*\(?\s*"([^"]+)"/g)].map((m) => m[1]);
    for (const s of specifiers) assertEquals(s, "../mod.ts", `${nb.name}: imports ${s}`);
  }
});

Deno.test("notebooks: every cell's source ends with a newline (deno fmt --check needs it)", () => {
  // Deno 2.9.6's `fmt --check` reports a cell whose last line has no newline as unformatted, yet
  // `deno fmt` leaves the file as it is; a warm fmt cache hides this locally, a fresh clone's CI fails.
  for (const nb of notebooks()) {
    for (const c of nb.cells) {
      const lines = [c.source].flat();
      if (lines.length === 0) continue;
      assert(lines[lines.length - 1].endsWith("\n"), `${nb.name}: cell ${c.id} lacks a final newline`);
    }
  }
});

Deno.test("notebooks: no TeX in markdown (nbconvert's HTML would need MathJax from the network)", () => {
  // Formulas are written in Unicode (½‖y‖², r·(d_in + d_out)), which reads the same rendered or not, offline.
  for (const nb of notebooks()) {
    for (const c of nb.cells.filter((c) => c.cell_type === "markdown")) {
      const tex = /\$[^$\n]+\$/.exec([c.source].flat().join(""));
      assert(tex === null, `${nb.name}: cell ${c.id} has TeX: ${tex?.[0]}`);
    }
  }
});
