/**
 * The notebooks' infrastructure, two commands:
 *
 * - `./deno task kernel` (`notebooks.ts install`): installs Jupyter where missing (Debian's
 *   jupyter-client, jupyter-nbconvert and python3-nbclient through apt-get when running as root; else it
 *   prints the exact command), copies the Deno binary that runs this script to a stable, versioned place
 *   (`$XDG_DATA_HOME/qlora-lab/deno-<version>/deno`, default `~/.local/share/...`: npx keeps Deno in a
 *   cache folder that can move or vanish, and `make clean` removes build/) and installs the kernelspec
 *   "deno" from that copy. Safe to re-run: it copies only when the binary changed and reinstalls the
 *   kernelspec with `--force`.
 * - `./deno task notebooks [NAME...]` (`notebooks.ts run`): type-checks the notebooks' code cells, then
 *   executes every `notebooks/*.ipynb` (or the ones named) top to bottom with the Deno kernel through
 *   nbclient (`execute_notebook.py`: see there why not plain `jupyter nbconvert --execute`), writes each
 *   executed notebook and its HTML rendering under `build/notebooks/`, prints each run time and fails on
 *   the first cell error.
 *
 * Notebooks are committed without outputs; this command regenerates them under build/notebooks/.
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { withAtomicFile, writeFileAtomic } from "../lib/atomic_file.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "");
const NOTEBOOKS = `${ROOT}/notebooks`;
const OUT = `${ROOT}/build/notebooks`;
const APT_PACKAGES = ["jupyter-client", "jupyter-nbconvert", "python3-nbclient"];
/** Seconds a notebook may take on 2 CPU cores before the run warns. */
const BUDGET_S = 180;
/** Seconds one cell may run before nbconvert stops it. */
const CELL_TIMEOUT_S = 300;

function fail(message: string): never {
  console.error(`error: ${message}`);
  Deno.exit(1);
}

async function exec(
  cmd: string,
  args: string[],
  options: { quiet?: boolean; env?: Record<string, string> } = {},
) {
  const out = await new Deno.Command(cmd, {
    args,
    stdout: options.quiet ? "piped" : "inherit",
    stderr: options.quiet ? "piped" : "inherit",
    env: options.env,
  }).output();
  const dec = new TextDecoder();
  return {
    code: out.code,
    stdout: options.quiet ? dec.decode(out.stdout) : "",
    stderr: options.quiet ? dec.decode(out.stderr) : "",
  };
}

function isFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/**
 * The `jupyter` command to use: Debian's /usr/bin/jupyter first (a pyenv or virtualenv `python3` ahead
 * on PATH usually lacks the Jupyter modules), else the first `jupyter` on PATH with nbconvert.
 */
async function findJupyter(): Promise<string | null> {
  const candidates = ["/usr/bin/jupyter"];
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (dir) candidates.push(`${dir}/jupyter`);
  }
  for (const c of candidates) {
    if (!isFile(c)) continue;
    const nbconvert = await exec(c, ["nbconvert", "--version"], { quiet: true }).catch(() => null);
    const kernelspec = await exec(c, ["kernelspec", "--version"], { quiet: true }).catch(() => null);
    if (nbconvert?.code === 0 && kernelspec?.code === 0) return c;
  }
  return null;
}

async function ensureJupyter(): Promise<string> {
  const found = await findJupyter();
  if (found) return found;
  const command = `apt-get install -y ${APT_PACKAGES.join(" ")}`;
  const isRoot = Deno.uid() === 0;
  const hasApt = isFile("/usr/bin/apt-get");
  if (!isRoot || !hasApt) {
    fail(
      `Jupyter (with nbconvert and nbclient) is missing; install it with: ${
        hasApt ? `sudo ${command}` : `pip install jupyter-client nbconvert nbclient`
      }, then re-run ./deno task kernel`,
    );
  }
  console.log(`kernel: installing ${APT_PACKAGES.join(", ")} with apt-get`);
  const env = { DEBIAN_FRONTEND: "noninteractive" };
  if ((await exec("apt-get", ["update", "-qq"], { env })).code !== 0) fail("apt-get update failed");
  if ((await exec("apt-get", ["install", "-y", "-qq", ...APT_PACKAGES], { env })).code !== 0) {
    fail(`${command} failed`);
  }
  return (await findJupyter()) ?? fail(`Jupyter is still not usable after ${command}`);
}

/** Where the kernel's Deno lives: outside the npx cache and outside build/. */
function stableDenoPath(): string {
  const data = Deno.env.get("XDG_DATA_HOME") ||
    `${Deno.env.get("HOME") ?? fail("HOME is not set")}/.local/share`;
  return `${data}/qlora-lab/deno-${Deno.version.deno}/deno`;
}

async function sameFile(a: string, b: string): Promise<boolean> {
  if (!isFile(b)) return false;
  const [sa, sb] = [Deno.statSync(a), Deno.statSync(b)];
  if (sa.size !== sb.size) return false;
  const [ha, hb] = await Promise.all([a, b].map(async (p) => {
    const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(p));
    return new Uint8Array(digest).join(",");
  }));
  return ha === hb;
}

async function installKernel(): Promise<void> {
  const jupyter = await ensureJupyter();
  const running = Deno.execPath();
  const stable = stableDenoPath();
  if (await sameFile(running, stable)) {
    console.log(`kernel: ${stable} is up to date`);
  } else {
    Deno.mkdirSync(stable.replace(/\/[^/]+$/, ""), { recursive: true });
    // Atomic: a kernel starting meanwhile sees the old or the new binary, never a partial one.
    await withAtomicFile(stable, async (file) => {
      using source = await Deno.open(running, { read: true });
      const chunk = new Uint8Array(1 << 20);
      while (true) {
        const n = await source.read(chunk);
        if (n === null) break;
        for (let done = 0; done < n;) done += await file.write(chunk.subarray(done, n));
      }
    }, { mode: 0o755 });
    console.log(`kernel: copied ${running} to ${stable}`);
  }
  const install = await exec(stable, [
    "jupyter",
    "--install",
    "--force",
    "--name",
    "deno",
    "--display",
    "Deno",
  ], {
    quiet: true,
  });
  if (install.code !== 0) fail(`deno jupyter --install failed:\n${install.stdout}${install.stderr}`);
  const specs = await exec(jupyter, ["kernelspec", "list", "--json"], { quiet: true });
  const spec = JSON.parse(specs.stdout || "{}")?.kernelspecs?.deno;
  const argv0 = spec?.spec?.argv?.[0];
  if (argv0 !== stable) {
    fail(`the kernelspec "deno" runs ${argv0 ?? "(none found)"}, expected ${stable}`);
  }
  console.log(`kernel: kernelspec "deno" at ${spec.resource_dir} runs ${argv0} (Deno ${Deno.version.deno})`);
}

/** The Python interpreter that runs a `jupyter` script (its #! line), which has nbclient and nbconvert. */
function pythonOf(jupyter: string): string {
  const first = Deno.readTextFileSync(jupyter).split("\n", 1)[0];
  const m = /^#!\s*(\S+)(?:\s+(\S+))?/.exec(first);
  if (!m) return "python3";
  return m[1].endsWith("/env") && m[2] ? m[2] : m[1];
}

/** Whether a notebook file holds outputs or execution counts (it should not: build/notebooks/ has them). */
function hasOutputs(path: string): boolean {
  const nb = JSON.parse(Deno.readTextFileSync(path)) as {
    cells: { cell_type: string; outputs?: unknown[]; execution_count?: number | null }[];
  };
  return nb.cells.some((c) =>
    c.cell_type === "code" && ((c.outputs?.length ?? 0) > 0 || c.execution_count != null)
  );
}

/**
 * The kernel runs cells without type-checking them, so check them first: each notebook's code cells,
 * joined into one module under build/notebooks/ (imports rewritten for that folder), through `deno check`.
 */
async function typeCheck(names: string[]): Promise<void> {
  const files: string[] = [];
  for (const name of names) {
    const nb = JSON.parse(Deno.readTextFileSync(`${NOTEBOOKS}/${name}`)) as {
      cells: { cell_type: string; source: string | string[] }[];
    };
    const code = nb.cells
      .filter((c) => c.cell_type === "code")
      .map((c, i) => `// cell ${i + 1}\n${Array.isArray(c.source) ? c.source.join("") : c.source}\n`)
      .join("\n")
      .replace(/(from\s+|import\s*\(\s*)(["'])\.\.\//g, "$1$2../../");
    const path = `${OUT}/${name.replace(/\.ipynb$/, ".check.ts")}`;
    await writeFileAtomic(
      path,
      `// Generated from notebooks/${name} for deno check; not for editing.\n${code}`,
    );
    files.push(path);
  }
  const r = await exec(Deno.execPath(), ["check", "--quiet", ...files], { quiet: true });
  if (r.code !== 0) fail(`the notebooks' cells do not type-check:\n${r.stderr}${r.stdout}`);
  console.log(`notebooks: cells type-check (${names.join(", ")})`);
}

async function runNotebooks(names: string[]): Promise<void> {
  const jupyter = (await findJupyter()) ?? fail("Jupyter is missing: run ./deno task kernel first");
  const python = pythonOf(jupyter);
  const all = [...Deno.readDirSync(NOTEBOOKS)]
    .filter((e) => e.isFile && e.name.endsWith(".ipynb"))
    .map((e) => e.name)
    .sort();
  const selected = names.length ? names.map((n) => n.replace(/^.*\//, "")) : all;
  for (const n of selected) {
    if (!all.includes(n)) fail(`no notebook ${n} in notebooks/ (have: ${all.join(", ")})`);
  }
  if (selected.length === 0) fail("no notebooks/*.ipynb to run");
  const dirty = selected.filter((n) => hasOutputs(`${NOTEBOOKS}/${n}`));
  if (dirty.length) {
    fail(
      `notebooks are committed without outputs, and ${dirty.join(", ")} ${
        dirty.length > 1 ? "have" : "has"
      } some; ` +
        `clear them with: ${jupyter} nbconvert --clear-output --inplace ${
          dirty.map((n) => `notebooks/${n}`).join(" ")
        } && ./deno fmt notebooks/`,
    );
  }
  Deno.mkdirSync(OUT, { recursive: true });
  await typeCheck(selected);
  const results: { name: string; seconds: number; figures: number }[] = [];
  for (const name of selected) {
    console.log(`notebooks: running ${name} ...`);
    const t0 = performance.now();
    const r = await exec(python, [
      `${ROOT}/scripts/execute_notebook.py`,
      `${NOTEBOOKS}/${name}`,
      OUT,
      "--kernel",
      "deno",
      "--timeout",
      String(CELL_TIMEOUT_S),
    ], { quiet: true });
    const seconds = (performance.now() - t0) / 1000;
    if (r.code !== 0) {
      const tail = (r.stderr + r.stdout).split("\n").slice(-60).join("\n");
      fail(`${name} failed after ${seconds.toFixed(1)} s:\n${tail}`);
    }
    const htmlPath = `${OUT}/${name.replace(/\.ipynb$/, ".html")}`;
    const html = Deno.readTextFileSync(htmlPath);
    const figures = html.split('class="qlora-plot"').length - 1;
    if (figures > 0 && !html.includes("window.Plotly = Plotly")) {
      fail(`${htmlPath} has ${figures} figures but no inlined plotly.js`);
    }
    results.push({ name, seconds, figures });
    const over = seconds > BUDGET_S ? `  (over the ${BUDGET_S} s budget)` : "";
    console.log(`notebooks: ${name} ok in ${seconds.toFixed(1)} s, ${figures} figures -> ${htmlPath}${over}`);
  }
  console.log("\nnotebook                          time   figures");
  for (const r of results) {
    console.log(
      `${r.name.padEnd(32)} ${r.seconds.toFixed(1).padStart(6)} s ${String(r.figures).padStart(6)}`,
    );
  }
}

if (import.meta.main) {
  const [command, ...rest] = Deno.args;
  if (command === "install") await installKernel();
  else if (command === "run") await runNotebooks(rest);
  else fail("usage: notebooks.ts install | run [NAME.ipynb...]");
}
