/**
 * Data flows one way: notebooks and scripts -> mod.ts -> lib/* -> lib/native -> the C ABI. These checks fail
 * when a script reaches into lib/ past mod.ts, or lib/ imports a script.
 */
import { assert, assertEquals } from "@std/assert";
import { ROOT, sources } from "./_sources.ts";

/** The relative module specifiers of a file's imports and re-exports, resolved against `base`. */
function specifiers(text: string, base: URL): URL[] {
  return [...text.matchAll(/^\s*(?:import|export)\s[^;]*?from\s*"(\.[^"]+)"/gms)].map((m) =>
    new URL(m[1], base)
  );
}

const rel = (url: URL) => url.href.slice(ROOT.href.length);

/** What a file of the repository imports, as paths from the repository root. */
const imports = (url: URL) => specifiers(Deno.readTextFileSync(url), url).map(rel);

Deno.test("layering: scripts use the library through mod.ts, never lib/ directly", () => {
  const offenders: string[] = [];
  for (const url of sources(new URL("scripts/", ROOT))) {
    for (const target of imports(url)) {
      if (target.startsWith("lib/")) offenders.push(`${rel(url)} -> ${target}`);
    }
  }
  assertEquals(offenders, []);
});

Deno.test("layering: benches go through mod.ts; only lib/native/mod.ts, to time the raw native calls", () => {
  const offenders: string[] = [];
  for (const url of sources(new URL("bench/", ROOT))) {
    for (const target of imports(url)) {
      if (target.startsWith("lib/") && target !== "lib/native/mod.ts") {
        offenders.push(`${rel(url)} -> ${target}`);
      }
    }
  }
  assertEquals(offenders, []);
});

Deno.test("layering: lib/ imports neither scripts nor mod.ts (its JSDoc examples may)", () => {
  const offenders: string[] = [];
  for (const url of sources(new URL("lib/", ROOT))) {
    for (const target of imports(url)) {
      if (target.startsWith("scripts/") || target === "mod.ts") offenders.push(`${rel(url)} -> ${target}`);
    }
  }
  assertEquals(offenders, []);
});

/** lib/'s folders, lowest first: a folder's modules import from its own folder and from folders below. */
const LAYERS = ["base", "native", "core", "nn", "data", "io", "optim", "llama", "train", "estimate", "lab"];

Deno.test("layering: lib/ is one folder per layer, each with a mod.ts, nothing loose", () => {
  const entries = [...Deno.readDirSync(new URL("lib/", ROOT))];
  assertEquals(entries.filter((e) => !e.isDirectory).map((e) => e.name), [], "files directly in lib/");
  assertEquals(entries.map((e) => e.name).sort(), [...LAYERS].sort());
  for (const layer of LAYERS) {
    const mod = new URL(`lib/${layer}/mod.ts`, ROOT);
    assertEquals(Deno.statSync(mod).isFile, true, `lib/${layer}/mod.ts`);
  }
});

/** The layer of a path under lib/ ("lib/core/tensor.ts" -> "core"), or null. */
const layerOf = (path: string) => path.startsWith("lib/") ? path.split("/")[1] : null;

/** Every import that breaks the layering: upward, or into another layer past its mod.ts. */
function layeringOffenders(edges: [from: string, to: string][]): string[] {
  const offenders: string[] = [];
  for (const [from, to] of edges) {
    const a = layerOf(from), b = layerOf(to);
    if (b === null || a === b) continue;
    if (to !== `lib/${b}/mod.ts`) offenders.push(`${from} -> ${to} (past lib/${b}/mod.ts)`);
    if (a !== null && LAYERS.indexOf(b) > LAYERS.indexOf(a)) offenders.push(`${from} -> ${to} (upward)`);
  }
  return offenders;
}

Deno.test("layering: lib/'s layers import downward only, and another layer only through its mod.ts", () => {
  const edges: [string, string][] = [];
  for (const url of [...sources(new URL("lib/", ROOT)), new URL("mod.ts", ROOT)]) {
    for (const target of imports(url)) edges.push([rel(url), target]);
  }
  assert(edges.length > 100, `${edges.length} imports seen`);
  assertEquals(layeringOffenders(edges), []);
});

Deno.test("layering: the layering check catches an upward import and one past a mod.ts", () => {
  assertEquals(layeringOffenders([["lib/core/tensor.ts", "lib/llama/mod.ts"]]), [
    "lib/core/tensor.ts -> lib/llama/mod.ts (upward)",
  ]);
  assertEquals(layeringOffenders([["lib/llama/model.ts", "lib/core/tensor.ts"]]), [
    "lib/llama/model.ts -> lib/core/tensor.ts (past lib/core/mod.ts)",
  ]);
  assertEquals(layeringOffenders([["mod.ts", "lib/native/abi.ts"]]), [
    "mod.ts -> lib/native/abi.ts (past lib/native/mod.ts)",
  ]);
  assertEquals(layeringOffenders([["lib/llama/model.ts", "lib/llama/_llama_block.ts"]]), []);
});

Deno.test("layering: the import scanner sees what it must", () => {
  const text = 'import { a } from "../lib/a.ts";\nexport {\n  b,\n} from "../mod.ts";\n' +
    'import type { C } from "./table/c.ts";\n/**\n * import { d } from "../lib/d.ts";\n */\nimport "node:fs";\n';
  const found = specifiers(text, new URL("scripts/x.ts", ROOT)).map(rel);
  assertEquals(found, ["lib/a.ts", "mod.ts", "scripts/table/c.ts"]);
});
