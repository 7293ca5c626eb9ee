/**
 * `lib/native/abi.ts` is generated from `cuda/include/qlora.h` (`./deno task gen:abi`): it must be up to
 * date, and its enum values and struct layouts must be what a C++ compiler makes of the header.
 */
import { assert, assertEquals } from "@std/assert";
import * as abi from "../lib/native/abi.ts";
import { DTYPES } from "../lib/core/dtype.ts";
import { CATEGORIES } from "../lib/core/memory.ts";
import { QUANT_TYPES } from "../lib/core/quant.ts";
import { expectedAbiFile, HEADER_PATH, parseHeader } from "../scripts/gen_abi.ts";

Deno.test("lib/native/abi.ts is what scripts/gen_abi.ts makes of qlora.h today (not stale)", async () => {
  const actual = await Deno.readTextFile(new URL("../lib/native/abi.ts", import.meta.url));
  const expected = await expectedAbiFile();
  assert(
    actual === expected,
    "lib/native/abi.ts is stale (cuda/include/qlora.h or scripts/gen_abi.ts changed): run ./deno task gen:abi",
  );
});

Deno.test("names derived from the generated enums keep their native code order", () => {
  assertEquals(DTYPES, ["f32", "bf16", "f16", "u8", "i32"]);
  assertEquals(QUANT_TYPES, ["nf4", "fp4", "int4"]);
  assertEquals(CATEGORIES.length, abi.NUM_CATEGORIES);
  assertEquals(CATEGORIES[abi.CATEGORY.OPTIMIZER_STATES], "optimizer_states");
  assertEquals(
    abi.LEDGER_SNAPSHOT.size / 8,
    30,
    "the ledger snapshot is 30 words (ABI 6: process_used, refused_bytes, refused_category; ABI 7: kv_cache)",
  );
});

function hasGxx(): boolean {
  try {
    return new Deno.Command("g++", { args: ["--version"], stdout: "null", stderr: "null" }).outputSync()
      .success;
  } catch {
    return false;
  }
}

const GXX = hasGxx();
if (!GXX) console.log("abi_test: g++ not found, skipping the check of layouts against a C++ compiler");

/** A C++ program printing `name value` for every define, enum member, struct size and field offset. */
function layoutProgram(header: string): string {
  const { defines, enums, structs } = parseHeader(header);
  const lines = [
    ...[...defines.keys()].map((d) => `P("${d}", ${d});`),
    ...[...enums.values()].flat().map(([m]) => `P("${m}", ${m});`),
    ...structs.flatMap((s) => [
      `P("sizeof ${s.name}", sizeof(${s.name}));`,
      `P("alignof ${s.name}", alignof(${s.name}));`,
      ...s.fields.map((f) => `P("${s.name}.${f.name}", offsetof(${s.name}, ${f.name}));`),
    ]),
  ];
  return [
    `#include "qlora.h"`,
    `#include <cstddef>`,
    `#include <cstdio>`,
    `static void P(const char* name, long long v) { std::printf("%s %lld\\n", name, v); }`,
    `int main() {`,
    ...lines.map((l) => `  ${l}`),
    `  return 0;`,
    `}`,
  ].join("\n");
}

Deno.test({
  name: "defines, enum values and struct layouts of abi.ts match g++'s view of qlora.h",
  ignore: !GXX,
  fn: async () => {
    const header = await Deno.readTextFile(HEADER_PATH);
    const dir = await Deno.makeTempDir({ prefix: "qlora_abi_" });
    try {
      await Deno.writeTextFile(`${dir}/layout.cpp`, layoutProgram(header));
      const include = new URL("../cuda/include", import.meta.url).pathname;
      const cc = await new Deno.Command("g++", {
        args: ["-std=c++17", "-I", include, `${dir}/layout.cpp`, "-o", `${dir}/layout`],
      }).output();
      assert(cc.success, `g++ failed: ${new TextDecoder().decode(cc.stderr)}`);
      const run = await new Deno.Command(`${dir}/layout`).output();
      assert(run.success);
      const c = new Map(
        new TextDecoder().decode(run.stdout).trim().split("\n").map((l) => {
          const at = l.lastIndexOf(" ");
          return [l.slice(0, at), Number(l.slice(at + 1))] as const;
        }),
      );
      const table = abi as unknown as Record<string, unknown>;
      const generated = (cName: string) => table[cName.replace(/^qlora_/i, "").toUpperCase()];
      const parsed = parseHeader(header);
      for (const name of parsed.defines.keys()) assertEquals(generated(name), c.get(name), name);
      for (const [name, members] of parsed.enums) {
        const values = Object.values(generated(name) as Record<string, number>);
        assertEquals(values, members.map(([m]) => c.get(m)), `enum ${name}`);
      }
      for (const s of parsed.structs) {
        const layout = generated(s.name) as { size: number; align: number; offsets: Record<string, number> };
        assertEquals(layout.size, c.get(`sizeof ${s.name}`), `sizeof ${s.name}`);
        assertEquals(layout.align, c.get(`alignof ${s.name}`), `alignof ${s.name}`);
        for (const f of s.fields) {
          assertEquals(layout.offsets[f.name], c.get(`${s.name}.${f.name}`), `offsetof ${s.name}.${f.name}`);
        }
      }
      assertEquals(parsed.structs.map((s) => s.name), [
        "qlora_ledger_snapshot",
        "qlora_weight4",
        "qlora_lora4",
        "qlora_adamw_segment",
        "qlora_adamw8_segment",
      ]);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
