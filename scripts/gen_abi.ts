/**
 * `./deno task gen:abi`: writes `lib/native/abi.ts` from `cuda/include/qlora.h`, so that the TypeScript
 * side of the ABI is never typed by hand twice: the `Deno.dlopen` symbol table, the `#define`d integers,
 * every enum, and the size and field offsets of every struct. `tests/abi_test.ts` regenerates it in
 * memory and fails when the checked-in file is stale.
 *
 * The parser reads this header's style only (not C in general):
 * - `#define QLORA_NAME 123` (integer defines),
 * - `typedef enum qlora_x { QLORA_A = 0, ... } qlora_x;`,
 * - `typedef struct qlora_x { type name; type name[N]; ... } qlora_x;` with fields of fixed-size
 *   integers, floats and pointers, laid out with natural alignment (x86-64 and aarch64, LP64),
 * - `QLORA_API <ret> qlora_name(<params>);` prototypes, grouped under the header's `---- section ----`
 *   comment lines.
 *
 * Names lose their `qlora_`/`QLORA_` prefix and are upper-cased (`qlora_copy_kind` is `COPY_KIND`); enum
 * members also lose the prefix all members of their enum share (`CAT_`) and `ERR_`.
 *
 * @module
 */

/** A function of the header: its name, section, C result type and parameters. */
export interface CFunction {
  /** `qlora_...`. */
  name: string;
  /** The `---- section ----` line above it, without a parenthetical. */
  section: string;
  /** C result type, e.g. `qlora_status`. */
  result: string;
  /** Parameters in order: C type and name. */
  params: { type: string; name: string }[];
}

/** A struct of the header with its computed layout. */
export interface CStruct {
  /** `qlora_...`. */
  name: string;
  /** Bytes, padding included. */
  size: number;
  /** Alignment of the struct (its widest field). */
  align: number;
  /** Fields in order, with byte offsets. */
  fields: { name: string; type: string; count: number; offset: number }[];
}

/** Everything the generator reads from the header. */
export interface Abi {
  /** Integer `#define`s, by name with `QLORA_`. */
  defines: Map<string, number>;
  /** Enums by C name; members by C name, in header order. */
  enums: Map<string, [string, number][]>;
  /** Structs in header order. */
  structs: CStruct[];
  /** Functions in header order. */
  functions: CFunction[];
}

/** Replaces comments by spaces of the same length, so that indices into the text stay valid. */
function blankComments(text: string): string {
  return text.replace(/\/\*[\s\S]*?\*\/|\/\/[^\n]*/g, (c) => c.replace(/[^\n]/g, " "));
}

/** Size and alignment of a scalar C type under LP64 (every pointer is 8 bytes). */
function scalarLayout(type: string): number {
  if (type.endsWith("*")) return 8;
  const sizes: Record<string, number> = {
    uint8_t: 1,
    int8_t: 1,
    char: 1,
    uint16_t: 2,
    int16_t: 2,
    uint32_t: 4,
    int32_t: 4,
    float: 4,
    uint64_t: 8,
    int64_t: 8,
    double: 8,
  };
  const size = sizes[type];
  if (size === undefined) throw new Error(`Cannot lay out C type ${type}: not a known scalar or pointer`);
  return size;
}

/** `const  void *` -> `const void*`. */
function normalizeType(type: string): string {
  return type.replace(/\s+/g, " ").replace(/\s*\*/g, "*").trim();
}

/**
 * Parses the header (see the module doc for the subset it reads).
 *
 * @example
 * ```ts
 * import { parseHeader } from "./gen_abi.ts";
 * import { assertEquals } from "@std/assert";
 * const abi = parseHeader("#define QLORA_X 3\ntypedef enum qlora_k { QLORA_A = 0, QLORA_B = 1 } qlora_k;");
 * assertEquals(abi.defines.get("QLORA_X"), 3);
 * assertEquals(abi.enums.get("qlora_k"), [["QLORA_A", 0], ["QLORA_B", 1]]);
 * ```
 */
export function parseHeader(header: string): Abi {
  const code = blankComments(header);
  const defines = new Map<string, number>();
  for (const m of code.matchAll(/^#define (QLORA_\w+) (-?\d+)\s*$/gm)) defines.set(m[1], Number(m[2]));

  const enums = new Map<string, [string, number][]>();
  for (const m of code.matchAll(/typedef enum (\w+) \{([^}]*)\} (\w+);/g)) {
    const members = m[2].split(",").map((s) => s.trim()).filter((s) => s !== "").map((s) => {
      const e = /^(\w+) = (-?\d+)$/.exec(s);
      if (!e) throw new Error(`Cannot read enum ${m[1]}: member "${s}" is not NAME = integer`);
      return [e[1], Number(e[2])] as [string, number];
    });
    enums.set(m[1], members);
  }

  const structs: CStruct[] = [];
  for (const m of code.matchAll(/typedef struct (\w+) \{([^}]*)\} (\w+);/g)) {
    let offset = 0;
    let align = 1;
    const fields = m[2].split(";").map((s) => s.trim()).filter((s) => s !== "").map((s) => {
      const f = /^(.+?)\s*\b(\w+)(?:\[(\w+)\])?$/.exec(s);
      if (!f) throw new Error(`Cannot read struct ${m[1]}: field "${s}"`);
      const type = normalizeType(f[1]);
      const count = f[3] === undefined ? 1 : /^\d+$/.test(f[3]) ? Number(f[3]) : defines.get(f[3]);
      if (count === undefined) throw new Error(`Cannot read struct ${m[1]}: unknown array length ${f[3]}`);
      const size = scalarLayout(type.replace(/^const /, ""));
      align = Math.max(align, size);
      offset = Math.ceil(offset / size) * size;
      const field = { name: f[2], type, count, offset };
      offset += size * count;
      return field;
    });
    structs.push({ name: m[1], size: Math.ceil(offset / align) * align, align, fields });
  }

  const sections = [...header.matchAll(/\/\* ---- (.+?) -{3,}/g)].map((s) => ({
    at: s.index,
    title: s[1].replace(/\s*\(.*\)$/, "").trim(),
  }));
  const functions: CFunction[] = [];
  for (const m of code.matchAll(/QLORA_API\s+([\w\s*]+?)\s*\b(qlora_\w+)\s*\(([^)]*)\)\s*;/g)) {
    const params = m[3].trim() === "void" ? [] : m[3].split(",").map((p) => {
      const f = /^(.+?)\s*\b(\w+)$/.exec(p.trim());
      if (!f) throw new Error(`Cannot read ${m[2]}: parameter "${p.trim()}"`);
      return { type: normalizeType(f[1]), name: f[2] };
    });
    const section = sections.filter((s) => s.at < m.index).at(-1)?.title ?? "";
    functions.push({ name: m[2], section, result: normalizeType(m[1]), params });
  }
  return { defines, enums, structs, functions };
}

/**
 * The `Deno.dlopen` type of a C parameter. A pointer is a `buffer` (host memory the caller passes as a
 * TypedArray) when the header makes it one: a pointer to a pointer (`void** out`), a `char*`, a
 * `qlora_*` struct, or a non-void pointer named `out...` or `..._out`; every other pointer is a device
 * `pointer`.
 *
 * @example
 * ```ts
 * import { ffiType } from "./gen_abi.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals(ffiType("float*", "out16"), "buffer");
 * assertEquals(ffiType("void*", "out"), "pointer");
 * assertEquals(ffiType("uint64_t", "n"), "u64");
 * ```
 */
export function ffiType(cType: string, name: string): string {
  const t = cType.replace(/^const /, "");
  if (t.endsWith("*")) {
    const base = t.replace(/\*+$/, "");
    const hostOut = base !== "void" && /^out|_out$/.test(name);
    return t.endsWith("**") || base === "char" || base.startsWith("qlora_") || hostOut ? "buffer" : "pointer";
  }
  const scalars: Record<string, string> = {
    uint64_t: "u64",
    int64_t: "i64",
    uint32_t: "u32",
    int32_t: "i32",
    float: "f32",
    double: "f64",
    qlora_status: "i32",
    void: "void",
  };
  const ffi = scalars[t];
  if (ffi === undefined) throw new Error(`Cannot map C type ${cType} to a Deno FFI type`);
  return ffi;
}

/** `qlora_copy_kind` -> `COPY_KIND`; `QLORA_ABI_VERSION` -> `ABI_VERSION`. */
function constName(cName: string): string {
  return cName.replace(/^qlora_/i, "").toUpperCase();
}

/** Enum member keys: without `QLORA_`, the prefix all members share, and `ERR_`. */
function memberKeys(members: [string, number][]): [string, number][] {
  const names = members.map(([n]) => n.replace(/^QLORA_/, ""));
  let prefix = names[0].slice(0, names[0].lastIndexOf("_") + 1);
  while (prefix && !names.every((n) => n.startsWith(prefix))) {
    prefix = prefix.slice(0, prefix.slice(0, -1).lastIndexOf("_") + 1);
  }
  return names.map((n, i) => [n.slice(prefix.length).replace(/^ERR_/, ""), members[i][1]]);
}

/**
 * The text of `lib/native/abi.ts` (before `deno fmt`).
 *
 * @example
 * ```ts
 * import { generateAbi } from "./gen_abi.ts";
 * import { assertStringIncludes } from "@std/assert";
 * const ts = generateAbi("#define QLORA_ABI_VERSION 9\nQLORA_API uint32_t qlora_abi_version(void);");
 * assertStringIncludes(ts, "export const ABI_VERSION = 9;");
 * assertStringIncludes(ts, 'qlora_abi_version: { parameters: [], result: "u32" },');
 * ```
 */
export function generateAbi(header: string): string {
  const abi = parseHeader(header);
  const out: string[] = [
    "// GENERATED by scripts/gen_abi.ts from cuda/include/qlora.h: do not edit.",
    "// Regenerate with: ./deno task gen:abi (tests/abi_test.ts fails when this file is stale).",
    "",
    "/**",
    " * The C ABI of `cuda/include/qlora.h` as typed constants: integer defines, enums (frozen objects,",
    " * members without their `QLORA_` prefix), struct layouts (LP64: size and byte offset of each field) and",
    " * the `Deno.dlopen` symbol table. Generated; edit the header and run `./deno task gen:abi`.",
    " *",
    " * @module",
    " */",
    "",
  ];
  for (const [name, value] of abi.defines) {
    const js = constName(name);
    out.push(
      `/**`,
      ` * \`${name}\` of the header.`,
      ` *`,
      ` * @example`,
      " * ```ts",
      ` * import { ${js} } from "./abi.ts";`,
      ` * import { assert } from "@std/assert";`,
      ` * assert(${js} === ${value});`,
      " * ```",
      ` */`,
      `export const ${js} = ${value};`,
      "",
    );
  }
  for (const [name, members] of abi.enums) {
    const js = constName(name);
    const keys = memberKeys(members);
    out.push(
      `/**`,
      ` * \`enum ${name}\` of the header (\`${members[0][0]}\` is \`${js}.${keys[0][0]}\`).`,
      ` *`,
      ` * @example`,
      " * ```ts",
      ` * import { ${js} } from "./abi.ts";`,
      ` * import { assert } from "@std/assert";`,
      ` * assert(${js}.${keys[1][0]} === ${keys[1][1]});`,
      " * ```",
      ` */`,
      `export const ${js}: Readonly<{ ${keys.map(([k, v]) => `${k}: ${v}`).join("; ")} }> = Object.freeze({`,
      `  ${keys.map(([k, v]) => `${k}: ${v}`).join(", ")},`,
      `});`,
      "",
    );
  }
  out.push(
    "/**",
    " * The layout of a C struct of the header: size and alignment in bytes, and the byte offset of each field.",
    " *",
    " * @example",
    " * ```ts",
    ' * import type { StructLayout } from "./abi.ts";',
    ' * import { assert } from "@std/assert";',
    ' * const pair: StructLayout<"a" | "b"> = { size: 16, align: 8, offsets: { a: 0, b: 8 } };',
    " * assert(pair.offsets.b === 8);",
    " * ```",
    " */",
    "export interface StructLayout<Field extends string> {",
    "  /** Bytes, the padding at the end included (`sizeof`). */",
    "  readonly size: number;",
    "  /** Alignment in bytes (`alignof`). */",
    "  readonly align: number;",
    "  /** Byte offset of each field from the start of the struct (`offsetof`). */",
    "  readonly offsets: Readonly<Record<Field, number>>;",
    "}",
    "",
  );
  for (const s of abi.structs) {
    const js = constName(s.name);
    const last = s.fields.at(-1)!;
    out.push(
      `/**`,
      ` * Layout of \`struct ${s.name}\` (LP64, natural alignment): its size in bytes, its alignment and`,
      ` * the byte offset of each field.`,
      ` *`,
      ` * @example`,
      " * ```ts",
      ` * import { ${js} } from "./abi.ts";`,
      ` * import { assert } from "@std/assert";`,
      ` * assert(${js}.size === ${s.size} && ${js}.offsets.${last.name} === ${last.offset});`,
      " * ```",
      ` */`,
      `export const ${js}: StructLayout<${s.fields.map((f) => `"${f.name}"`).join(" | ")}> = Object.freeze({`,
      `  size: ${s.size},`,
      `  align: ${s.align},`,
      `  offsets: Object.freeze({ ${s.fields.map((f) => `${f.name}: ${f.offset}`).join(", ")} }),`,
      `});`,
      "",
    );
  }
  out.push(
    "/**",
    " * The native symbols, typed for `Deno.dlopen`, one entry per function of the header in its order.",
    " * Device pointers are `pointer`; host outputs and descriptor arrays are `buffer`; sizes are `u64`.",
    " *",
    " * @example",
    " * ```ts",
    ' * import { symbols } from "./abi.ts";',
    ' * import { assert } from "@std/assert";',
    ' * assert(symbols.qlora_abi_version.result === "u32");',
    " * ```",
    " */",
    "export const symbols = {",
  );
  let section = "";
  for (const f of abi.functions) {
    if (f.section !== section && f.section !== "") out.push(`  // ${f.section}`);
    section = f.section;
    const params = f.params.map((p) => `"${ffiType(p.type, p.name)}"`).join(", ");
    out.push(
      `  ${f.name}: { parameters: [${params}], result: "${
        f.result.endsWith("*") ? "pointer" : ffiType(f.result, "")
      }" },`,
    );
  }
  out.push("} as const satisfies Deno.ForeignLibraryInterface;", "");
  return out.join("\n");
}

/** The repository root, from this file. */
const ROOT = new URL("../", import.meta.url);

/** `cuda/include/qlora.h`. */
export const HEADER_PATH: URL = new URL("cuda/include/qlora.h", ROOT);

/** `lib/native/abi.ts`. */
export const ABI_PATH: URL = new URL("lib/native/abi.ts", ROOT);

/**
 * Formats TypeScript with `deno fmt` under this repository's settings (line width 110).
 *
 * @example
 * ```ts
 * import { formatTs } from "./gen_abi.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals(await formatTs("const a = {x:1}"), "const a = { x: 1 };\n");
 * ```
 */
export async function formatTs(text: string): Promise<string> {
  const cmd = new Deno.Command(Deno.execPath(), {
    args: ["fmt", "--ext=ts", "-"],
    cwd: ROOT,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = cmd.stdin.getWriter();
  await writer.write(new TextEncoder().encode(text));
  await writer.close();
  const { code, stdout, stderr } = await cmd.output();
  if (code !== 0) throw new Error(`Cannot format the generated ABI: ${new TextDecoder().decode(stderr)}`);
  return new TextDecoder().decode(stdout);
}

/**
 * The formatted contents `lib/native/abi.ts` must have for the header as it is now.
 *
 * @example
 * ```ts
 * import { expectedAbiFile } from "./gen_abi.ts";
 * import { assertStringIncludes } from "@std/assert";
 * assertStringIncludes(await expectedAbiFile(), "export const symbols = {");
 * ```
 */
export async function expectedAbiFile(): Promise<string> {
  return await formatTs(generateAbi(await Deno.readTextFile(HEADER_PATH)));
}

if (import.meta.main) {
  if (Deno.args.includes("--help") || Deno.args.includes("-h")) {
    console.log(
      "usage: ./deno task gen:abi\n  -h, --help  print this help and exit\n\n" +
        "Writes lib/native/abi.ts (the dlopen symbol table, defines, enums and struct layouts) from cuda/include/qlora.h.",
    );
    Deno.exit(0);
  }
  if (Deno.args.length) {
    console.error(`error: unexpected argument ${Deno.args[0]}\nusage: ./deno task gen:abi`);
    Deno.exit(1);
  }
  const text = await expectedAbiFile();
  await Deno.writeTextFile(ABI_PATH, text);
  console.log(`wrote ${ABI_PATH.pathname.replace(ROOT.pathname, "")} (${text.split("\n").length - 1} lines)`);
}
