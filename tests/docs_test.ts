/**
 * The JSDoc examples run as tests (`deno test --doc`); these checks keep them able to fail.
 */
import { assert } from "@std/assert";
import { ROOT, sources } from "./_sources.ts";

Deno.test("docs: examples assert with @std/assert, never console.assert (which only logs)", () => {
  const offenders: string[] = [];
  for (const dir of ["lib/", "scripts/"]) {
    for (const url of sources(new URL(dir, ROOT))) {
      const lines = Deno.readTextFileSync(url).split("\n");
      lines.forEach((line, i) => {
        if (line.includes("console.assert(")) offenders.push(`${url.pathname}:${i + 1}`);
      });
    }
  }
  assert(offenders.length === 0, `console.assert in: ${offenders.join(", ")}`);
});

Deno.test("docs: every exported function and class in lib/ has a JSDoc example", () => {
  const missing: string[] = [];
  for (const url of sources(new URL("lib/", ROOT))) {
    const text = Deno.readTextFileSync(url);
    const re = /(\/\*\*(?:(?!\*\/)[\s\S])*\*\/\s*)?export (?:async )?(?:function|class) (\w+)/g;
    for (const m of text.matchAll(re)) {
      if (!m[1]?.includes("@example")) missing.push(`${url.pathname.replace(/.*\/lib\//, "lib/")}: ${m[2]}`);
    }
  }
  assert(missing.length === 0, `no @example for: ${missing.join(", ")}`);
});
