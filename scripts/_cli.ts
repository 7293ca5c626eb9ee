/**
 * Small helpers shared by the command-line scripts: flag parsing with clear errors, the help every command
 * prints for `--help` or `-h` (one format: {@linkcode helpText}), a progress bar on stderr, and a failure
 * path that prints "error: ..." and exits 1.
 *
 * @module
 */

import { parseBytes, TARGET_MODULES, type TargetModule } from "../mod.ts";

/** A flag's kind: a boolean switch, or one that takes a value. */
export type FlagSpec = Record<string, "boolean" | "string">;

/** Parsed command line: positional arguments and flags. */
export interface ParsedArgs {
  /** Arguments that are not flags. */
  positional: string[];
  /** Flags by name (without dashes). */
  flags: Record<string, string | boolean>;
}

/** Thrown for a bad command line; scripts print it with the usage. */
export class UsageError extends Error {}

/**
 * `--targets q,k,v,o,gate,up,down` (with or without `_proj`) as target modules; absent: all seven. An
 * unknown name is a {@linkcode UsageError}.
 *
 * @example
 * ```ts
 * import { targetsFlag } from "./_cli.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 * assertEquals(targetsFlag("q,v_proj"), ["q_proj", "v_proj"]);
 * assertEquals(targetsFlag(undefined).length, 7);
 * assertThrows(() => targetsFlag("q,x"), Error, "--targets: x_proj");
 * ```
 */
export function targetsFlag(value: string | boolean | undefined): TargetModule[] {
  if (value === undefined) return [...TARGET_MODULES];
  const targets = String(value).split(",").map((t) =>
    t.endsWith("_proj") ? t : `${t}_proj`
  ) as TargetModule[];
  for (const t of targets) {
    if (!TARGET_MODULES.includes(t)) {
      throw new UsageError(`--targets: ${t} is not one of ${TARGET_MODULES.join(", ")}`);
    }
  }
  return targets;
}

/**
 * A reader of positive integer flags: `int("steps", 200)` is `--steps` when given, else 200; anything but a
 * positive integer is a {@linkcode UsageError}.
 *
 * @example
 * ```ts
 * import { intFlags } from "./_cli.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 * const int = intFlags({ steps: "40", bad: "1.5" });
 * assertEquals([int("steps", 200), int("batch", 8)], [40, 8]);
 * assertThrows(() => int("bad", 1), Error, "--bad must be a positive integer");
 * ```
 */
export function intFlags(
  flags: Record<string, string | boolean>,
): (name: string, fallback: number) => number {
  return (name, fallback) => {
    const v = flags[name] === undefined ? fallback : Number(flags[name]);
    if (!Number.isSafeInteger(v) || v <= 0) throw new UsageError(`--${name} must be a positive integer`);
    return v;
  };
}

/** A memory budget from `--budget SIZE [--reserve SIZE]`, in bytes. */
export interface BudgetFlags {
  /** `--budget`: the device's memory, as a card's size ("6GiB"). */
  budget: number;
  /**
   * `--reserve`: what the device keeps for itself and no ledger sees (the CUDA context, the libraries'
   * workspaces); 0 when absent.
   */
  reserve: number;
  /** The ledger's budget: `budget - reserve`. */
  ledger: number;
}

/** A byte-size flag's value; a size that does not parse is a {@linkcode UsageError}. */
function sizeFlag(flags: Record<string, string | boolean>, name: string): number {
  try {
    return parseBytes(String(flags[name]));
  } catch (e) {
    throw new UsageError(`--${name}: ${(e as Error).message}`);
  }
}

/**
 * `--budget SIZE [--reserve SIZE]`: the ledger's budget is the budget less the reserve (the device's own
 * overhead, which no ledger sees), so `--budget 6GiB --reserve 0.31GiB` behaves like a 6 GiB card. Null
 * without `--budget`; `--reserve` without `--budget`, a budget of 0 or a reserve that leaves nothing of
 * the budget is a {@linkcode UsageError}.
 *
 * @example
 * ```ts
 * import { budgetFlags } from "./_cli.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 * assertEquals(budgetFlags({ budget: "6GiB", reserve: "512MiB" })?.ledger, 5.5 * 2 ** 30);
 * assertEquals(budgetFlags({ budget: "6GiB" })?.ledger, 6 * 2 ** 30);
 * assertEquals(budgetFlags({}), null);
 * assertThrows(() => budgetFlags({ reserve: "1GiB" }), Error, "--reserve needs --budget");
 * assertThrows(() => budgetFlags({ budget: "1GiB", reserve: "1GiB" }), Error, "smaller than --budget");
 * ```
 */
export function budgetFlags(flags: Record<string, string | boolean>): BudgetFlags | null {
  if (flags.budget === undefined) {
    if (flags.reserve !== undefined) {
      throw new UsageError("--reserve needs --budget: the reserve is taken out of the budget");
    }
    return null;
  }
  const budget = sizeFlag(flags, "budget");
  if (!(budget > 0)) throw new UsageError(`--budget must be a size > 0, such as 6GiB; got ${flags.budget}`);
  const reserve = flags.reserve === undefined ? 0 : sizeFlag(flags, "reserve");
  if (reserve >= budget) {
    throw new UsageError(
      `--reserve ${flags.reserve} must be smaller than --budget ${flags.budget}: it is taken out of the budget`,
    );
  }
  return { budget, reserve, ledger: budget - reserve };
}

/** The help lines of {@linkcode budgetFlags}'s flags, for the commands that take them. */
export const BUDGET_HELP: readonly HelpOption[] = [
  ["--budget SIZE", "cap the ledger, such as 6GiB (an OutOfMemoryError past it); default none"],
  ["--reserve SIZE", "the device's overhead (CUDA context, workspaces), out of --budget; default 0"],
];

/** A training step's memory savers from the command line, as `LlamaOptions` takes them. */
export interface StepMemoryFlags {
  /** `--checkpointing`: recompute each block in backward. */
  checkpointing: boolean;
  /** `--offload-checkpoints`: the checkpoints in the host pool (needs `--checkpointing`). */
  offloadCheckpoints: boolean;
  /** `--loss-chunk N`: rows of the LM head and the loss at a time (0: all); absent: the model's default. */
  lossChunk?: number;
}

/**
 * `--checkpointing`, `--offload-checkpoints` and `--loss-chunk N` (an integer >= 0, 0 the whole step at
 * once). `--offload-checkpoints` without `--checkpointing` is a {@linkcode UsageError}: without
 * checkpointing there are no checkpoints to offload.
 *
 * @example
 * ```ts
 * import { stepMemoryFlags } from "./_cli.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 * assertEquals(stepMemoryFlags({ checkpointing: true, "offload-checkpoints": true, "loss-chunk": "0" }), {
 *   checkpointing: true,
 *   offloadCheckpoints: true,
 *   lossChunk: 0,
 * });
 * assertEquals(stepMemoryFlags({}), { checkpointing: false, offloadCheckpoints: false });
 * assertThrows(() => stepMemoryFlags({ "offload-checkpoints": true }), Error, "needs --checkpointing");
 * assertThrows(() => stepMemoryFlags({ "loss-chunk": "-1" }), Error, "--loss-chunk");
 * ```
 */
export function stepMemoryFlags(flags: Record<string, string | boolean>): StepMemoryFlags {
  const checkpointing = flags.checkpointing === true;
  const offloadCheckpoints = flags["offload-checkpoints"] === true;
  if (offloadCheckpoints && !checkpointing) {
    throw new UsageError(
      "--offload-checkpoints needs --checkpointing: it moves the block inputs that checkpointing keeps",
    );
  }
  if (flags["loss-chunk"] === undefined) return { checkpointing, offloadCheckpoints };
  const lossChunk = Number(flags["loss-chunk"]);
  if (!Number.isSafeInteger(lossChunk) || lossChunk < 0) {
    throw new UsageError("--loss-chunk must be an integer >= 0 (rows at a time; 0: all at once)");
  }
  return { checkpointing, offloadCheckpoints, lossChunk };
}

/** The help lines of {@linkcode stepMemoryFlags}'s flags, for the commands that take them. */
export const STEP_MEMORY_HELP: readonly HelpOption[] = [
  ["--checkpointing", "recompute each block in backward from its saved input; default off"],
  ["--offload-checkpoints", "keep those inputs in the host pool (needs --checkpointing); default off"],
  ["--loss-chunk N", "LM head and loss rows at a time (0: all); default those whose logits fit 32 MiB"],
];

/**
 * Parses `--name value`, `--name=value` and boolean `--name`; unknown flags are an error.
 *
 * @example
 * ```ts
 * import { parseArgs } from "./_cli.ts";
 * import { assert } from "@std/assert";
 * const a = parseArgs(["in", "--blocksize", "64", "--no-double-quant"], {
 *   blocksize: "string",
 *   "no-double-quant": "boolean",
 * });
 * assert(a.flags.blocksize === "64" && a.positional[0] === "in");
 * ```
 */
export function parseArgs(argv: string[], spec: FlagSpec): ParsedArgs {
  const positional: string[] = [];
  const flags: Record<string, string | boolean> = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith("--")) {
      positional.push(arg);
      continue;
    }
    const eq = arg.indexOf("=");
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    const kind = spec[name];
    if (!kind) throw new UsageError(`unknown flag --${name}`);
    if (kind === "boolean") {
      if (eq >= 0) throw new UsageError(`--${name} takes no value`);
      flags[name] = true;
    } else {
      const value = eq >= 0 ? arg.slice(eq + 1) : argv[++i];
      if (value === undefined || value === "") throw new UsageError(`--${name} needs a value`);
      flags[name] = value;
    }
  }
  return { positional, flags };
}

/**
 * Takes a flag whose value is optional (`--resume` or `--resume DIR`, `--resume=DIR`) out of `argv`:
 * true when given bare, its value when one follows that is not a flag, undefined when absent.
 *
 * @example
 * ```ts
 * import { takeOptionalFlag } from "./_cli.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals(takeOptionalFlag(["--resume", "--steps", "4"], "resume"), { value: true, rest: ["--steps", "4"] });
 * assertEquals(takeOptionalFlag(["--resume", "out"], "resume").value, "out");
 * ```
 */
export function takeOptionalFlag(argv: string[], name: string): { value?: string | true; rest: string[] } {
  const rest: string[] = [];
  let value: string | true | undefined;
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === `--${name}`) {
      const next = argv[i + 1];
      value = next !== undefined && !next.startsWith("--") ? (i++, next) : true;
    } else if (argv[i].startsWith(`--${name}=`)) {
      value = argv[i].slice(name.length + 3) || true;
    } else {
      rest.push(argv[i]);
    }
  }
  return { value, rest };
}

/**
 * A one-line progress bar on stderr, drawn only when stderr is a terminal.
 *
 * @example
 * ```ts
 * import { ProgressBar } from "./_cli.ts";
 * const bar = new ProgressBar("quantize");
 * bar.update(0.5);
 * bar.done();
 * ```
 */
export class ProgressBar {
  #label: string;
  #tty: boolean;
  #last = -1;
  /** Creates a bar with a label. */
  constructor(label: string) {
    this.#label = label;
    this.#tty = Deno.stderr.isTerminal();
  }
  /** Draws the fraction done (0..1). */
  update(fraction: number): void {
    if (!this.#tty) return;
    const pct = Math.floor(fraction * 100);
    if (pct === this.#last) return;
    this.#last = pct;
    const width = 30;
    const filled = Math.round((pct / 100) * width);
    const line = `\r${this.#label} [${"#".repeat(filled)}${" ".repeat(width - filled)}] ${pct}%`;
    Deno.stderr.writeSync(new TextEncoder().encode(line));
  }
  /** Clears the bar. */
  done(): void {
    if (this.#tty && this.#last >= 0) Deno.stderr.writeSync(new TextEncoder().encode("\r\x1b[K"));
  }
}

/**
 * One option of a command's help: the flag as typed, with its argument (`--steps N`, `--mode full|lora`),
 * and what it does, ending in its default (`; default 64`, `; default off`, `; required`).
 */
export type HelpOption = readonly [flag: string, description: string];

/** The line every command's help ends its options with. */
const HELP_OPTION: HelpOption = ["-h, --help", "print this help and exit"];

/**
 * A command's help in the scripts' one format: `usage: ` and the synopsis (further synopses aligned under
 * the first), then one line per option, its flag padded to the longest, and `-h, --help` last; then the
 * `notes`, if any, after a blank line. {@linkcode runMain} and {@linkcode parseCommandLine} print it for
 * `--help` or `-h`, and after a {@linkcode UsageError}.
 *
 * @example
 * ```ts
 * import { helpText } from "./_cli.ts";
 * import { assertEquals } from "@std/assert";
 * const help = helpText("./deno task demo [--steps N]", [
 *   ["--steps N", "training steps; default 200"],
 *   ["--json", "print the result as JSON; default off"],
 * ]);
 * assertEquals(help.split("\n"), [
 *   "usage: ./deno task demo [--steps N]",
 *   "  --steps N   training steps; default 200",
 *   "  --json      print the result as JSON; default off",
 *   "  -h, --help  print this help and exit",
 * ]);
 * ```
 */
export function helpText(
  synopsis: string | readonly string[],
  options: readonly HelpOption[],
  notes: readonly string[] = [],
): string {
  const lines = (typeof synopsis === "string" ? [synopsis] : synopsis).map((s, i) =>
    `${i === 0 ? "usage: " : "       "}${s}`
  );
  const all = [...options, HELP_OPTION];
  const width = Math.max(...all.map(([flag]) => flag.length));
  lines.push(...all.map(([flag, what]) => `  ${flag.padEnd(width)}  ${what}`));
  if (notes.length) lines.push("", ...notes);
  return lines.join("\n");
}

/**
 * Whether a command line asks for the help: `--help` or `-h` anywhere in it.
 *
 * @example
 * ```ts
 * import { helpRequested } from "./_cli.ts";
 * import { assert } from "@std/assert";
 * assert(helpRequested(["--steps", "4", "-h"]) && helpRequested(["--help"]));
 * assert(!helpRequested(["--steps", "4"]));
 * ```
 */
export function helpRequested(argv: readonly string[] = Deno.args): boolean {
  return argv.includes("--help") || argv.includes("-h");
}

/** Prints the usage and exits 0 when `argv` asks for the help. */
function exitOnHelp(usage: string, argv: readonly string[]): void {
  if (!helpRequested(argv)) return;
  console.log(usage);
  Deno.exit(0);
}

/**
 * {@linkcode parseArgs} for a script that runs at its top level, without {@linkcode runMain} (the bench
 * entry points): `--help` or `-h` prints the usage and exits 0 before anything else runs; a bad command
 * line prints "error: ..." and the usage and exits 1.
 *
 * @example
 * ```ts
 * import { parseCommandLine } from "./_cli.ts";
 * import { assertEquals } from "@std/assert";
 * const { flags } = parseCommandLine({ seq: "string", quick: "boolean" }, "usage: bench", ["--seq", "64"]);
 * assertEquals(flags, { seq: "64" });
 * ```
 */
export function parseCommandLine(spec: FlagSpec, usage: string, argv: string[] = Deno.args): ParsedArgs {
  exitOnHelp(usage, argv);
  try {
    return parseArgs(argv, spec);
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    console.error(`error: ${e.message}`);
    console.error(usage);
    Deno.exit(1);
  }
}

/**
 * Runs a script's main function: `--help` or `-h` anywhere in `Deno.args` prints the usage and exits 0
 * before `main` runs; errors print "error: message" (plus the usage for a {@linkcode UsageError}) and
 * exit with status 1 instead of a stack trace.
 *
 * @example
 * ```ts
 * import { helpText, runMain } from "./_cli.ts";
 * await runMain(() => {}, helpText("./deno task nothing", []));
 * ```
 */
export async function runMain(main: () => Promise<void> | void, usage: string): Promise<void> {
  exitOnHelp(usage, Deno.args);
  try {
    await main();
  } catch (e) {
    console.error(`error: ${(e as Error).message}`);
    if (e instanceof UsageError) console.error(usage);
    Deno.exit(1);
  }
}
