/**
 * Data flows one way: notebooks and scripts -> mod.ts -> lib/* -> lib/ffi -> the C ABI. These checks fail
 * when a script reaches into lib/ past mod.ts, or lib/ imports a script.
 */
import { assertEquals } from "@std/assert";
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

Deno.test("layering: benches go through mod.ts; only lib/ffi/mod.ts, to time the raw native calls", () => {
  const offenders: string[] = [];
  for (const url of sources(new URL("bench/", ROOT))) {
    for (const target of imports(url)) {
      if (target.startsWith("lib/") && target !== "lib/ffi/mod.ts") {
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

Deno.test("layering: the import scanner sees what it must", () => {
  const text = 'import { a } from "../lib/a.ts";\nexport {\n  b,\n} from "../mod.ts";\n' +
    'import type { C } from "./table/c.ts";\n/**\n * import { d } from "../lib/d.ts";\n */\nimport "node:fs";\n';
  const found = specifiers(text, new URL("scripts/x.ts", ROOT)).map(rel);
  assertEquals(found, ["lib/a.ts", "mod.ts", "scripts/table/c.ts"]);
});
