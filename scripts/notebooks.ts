/**
 * The notebooks' infrastructure, three commands:
 *
 * - `./deno task kernel` (`notebooks.ts install`): installs Jupyter where missing (Debian's
 *   jupyter-client, jupyter-nbconvert, python3-nbclient and jupyter-notebook through apt-get when running
 *   as root; else it prints the exact command), copies the Deno binary that runs this script to a stable,
 *   versioned place (`$XDG_DATA_HOME/qlora-lab/deno-<version>/deno`, default `~/.local/share/...`: npx
 *   keeps Deno in a cache folder that can move or vanish, and `make clean` removes build/) and installs
 *   the kernelspec "deno" from that copy. Safe to re-run: it copies only when the binary changed and
 *   reinstalls the kernelspec with `--force`.
 * - `./deno task jupyter [--port N]` (`notebooks.ts serve`): the classic Jupyter Notebook at the
 *   repository root, on 127.0.0.1 only, with a fresh token; prints the URL of `notebooks/` and runs until
 *   Ctrl+C, which stops the server and its kernels.
 * - `./deno task notebooks [--nbclient] [NAME...]` (`notebooks.ts run`): type-checks the notebooks'
 *   code cells, then runs every `notebooks/*.ipynb` (or the ones named) in a real browser: a Jupyter
 *   server on a free local port, Debian's Chromium driven by puppeteer-core, "Run All" in the page
 *   (scripts/_browser.ts), and the page judged as rendered (scripts/_notebook_checks.ts: no error, no
 *   stderr, every figure drawn, the key figures shown, live displays updated, nothing fetched from the
 *   network). Writes each executed notebook, its HTML rendering and a screenshot under
 *   `build/notebooks/`, prints each run time, and fails when any notebook does. `--nbclient` runs them
 *   headless through nbclient instead (`execute_notebook.py`), where no browser can be had; `--plain`
 *   through the stock nbclient, as `jupyter nbconvert --execute` runs them (no grace period for late
 *   outputs). Both check that every figure a cell shows with `show()` is in the executed file.
 *
 * Notebooks are committed without outputs; these commands regenerate them under build/notebooks/.
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import puppeteer from "puppeteer-core";
import { withAtomicFile, writeFileAtomic } from "../mod.ts";
import { type NotebookRun, runNotebookInBrowser } from "./_browser.ts";
import { helpText, parseArgs, runMain, UsageError } from "./_cli.ts";
import { type JupyterServer, startJupyterServer } from "./_jupyter.ts";
import { judge, missingFigures } from "./_notebook_checks.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "");
const NOTEBOOKS = `${ROOT}/notebooks`;
const OUT = `${ROOT}/build/notebooks`;
const APT_PACKAGES = ["jupyter-client", "jupyter-nbconvert", "python3-nbclient", "jupyter-notebook"];
/** Debian's Chromium, which the browser run drives. */
const CHROMIUM = "/usr/bin/chromium";
/** Seconds a notebook may take on 2 CPU cores before the run warns. */
const BUDGET_S = 180;
/** Seconds one cell may run before nbconvert stops it (--nbclient). */
const CELL_TIMEOUT_S = 300;
/** Seconds a whole notebook may run in the browser before the run gives up on it. */
const NOTEBOOK_TIMEOUT_S = 420;
/** Runs of one notebook in the browser when it fails without a cell error (a kernel protocol error). */
const ATTEMPTS = 3;

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
 * on PATH usually lacks the Jupyter modules), else the first `jupyter` on PATH with nbconvert and the
 * classic notebook server.
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
    const notebook = await exec(c, ["notebook", "--version"], { quiet: true }).catch(() => null);
    if (nbconvert?.code === 0 && kernelspec?.code === 0 && notebook?.code === 0) return c;
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
      `Jupyter (with nbconvert, nbclient and the classic notebook) is missing; install it with: ${
        hasApt ? `sudo ${command}` : `pip install jupyter-client nbconvert nbclient "notebook<7"`
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

/** The notebooks to run: all of notebooks/*.ipynb, or the ones named; refuses any with outputs. */
function selectNotebooks(names: string[], jupyter: string): string[] {
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
  return selected;
}

interface Result {
  name: string;
  seconds: number;
  figures: number;
  live?: number;
  screenshot?: string;
}

function printSummary(results: Result[]): void {
  const browser = results.some((r) => r.screenshot);
  console.log(`\nnotebook                          time   figures${browser ? "   live   screenshot" : ""}`);
  for (const r of results) {
    console.log(
      `${r.name.padEnd(32)} ${r.seconds.toFixed(1).padStart(6)} s ${String(r.figures).padStart(6)}` +
        (browser
          ? ` ${String(r.live ?? 0).padStart(6)}   ${r.screenshot?.replace(`${ROOT}/`, "") ?? ""}`
          : ""),
    );
  }
  const total = results.reduce((a, r) => a + r.seconds, 0);
  console.log(`${"total".padEnd(32)} ${total.toFixed(1).padStart(6)} s`);
}

/** Checks that an HTML rendering with figures carries plotly.js; returns the number of figures. */
function checkHtml(htmlPath: string): number {
  const html = Deno.readTextFileSync(htmlPath);
  const figures = html.split('class="qlora-plot"').length - 1;
  if (figures > 0 && !html.includes("window.Plotly = Plotly")) {
    fail(`${htmlPath} has ${figures} figures but no inlined plotly.js`);
  }
  return figures;
}

/** `--nbclient`: each notebook headless through nbclient (execute_notebook.py), no browser. */
async function runWithNbclient(selected: string[], jupyter: string, plain: boolean): Promise<void> {
  const python = pythonOf(jupyter);
  const results: Result[] = [];
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
      ...(plain ? ["--plain"] : []),
    ], { quiet: true });
    const seconds = (performance.now() - t0) / 1000;
    if (r.code !== 0) {
      const tail = (r.stderr + r.stdout).split("\n").slice(-60).join("\n");
      fail(`${name} failed after ${seconds.toFixed(1)} s:\n${tail}`);
    }
    const htmlPath = `${OUT}/${name.replace(/\.ipynb$/, ".html")}`;
    const figures = checkHtml(htmlPath);
    const lost = missingFigures(JSON.parse(Deno.readTextFileSync(`${OUT}/${name}`)));
    if (lost.length > 0) fail(`${name}${plain ? " (plain nbclient)" : ""}: ${lost.join("; ")}`);
    results.push({ name, seconds, figures });
    const over = seconds > BUDGET_S ? `  (over the ${BUDGET_S} s budget)` : "";
    console.log(`notebooks: ${name} ok in ${seconds.toFixed(1)} s, ${figures} figures -> ${htmlPath}${over}`);
  }
  printSummary(results);
}

/** Debian's Chromium, installed with apt-get where missing and running as root. */
async function ensureChromium(): Promise<string> {
  if (isFile(CHROMIUM)) return CHROMIUM;
  if (Deno.uid() !== 0 || !isFile("/usr/bin/apt-get")) {
    fail(
      `the browser run needs Chromium (${CHROMIUM}): sudo apt-get install -y chromium; ` +
        `or run the notebooks headless: ./deno task notebooks --nbclient`,
    );
  }
  console.log("notebooks: installing chromium with apt-get");
  const env = { DEBIAN_FRONTEND: "noninteractive" };
  if ((await exec("apt-get", ["update", "-qq"], { env })).code !== 0) fail("apt-get update failed");
  if ((await exec("apt-get", ["install", "-y", "-qq", "chromium"], { env })).code !== 0) {
    fail("apt-get install -y chromium failed");
  }
  return isFile(CHROMIUM) ? CHROMIUM : fail(`${CHROMIUM} is still missing after apt-get install chromium`);
}

/**
 * Deno 2.9's kernel now and then sends a message whose HMAC signature jupyter_client refuses ("Invalid
 * Signature"); the server drops it, and the page waits forever for a reply that will not come. Reads the
 * server's log from `offset` for that error.
 */
function protocolError(log: string, offset: number): string | null {
  const bytes = Deno.readFileSync(log).subarray(offset);
  return /Invalid Signature/.test(new TextDecoder().decode(bytes))
    ? "the Jupyter server refused a kernel message (Invalid Signature)"
    : null;
}

/** Stops every kernel session of the server (one per notebook opened). */
async function closeSessions(server: JupyterServer): Promise<void> {
  const sessions = await server.api("GET", "/api/sessions") as { id: string }[];
  for (const s of sessions) await server.api("DELETE", `/api/sessions/${s.id}`);
}

/**
 * The browser run: one server and one Chromium for all notebooks, each notebook in a new page with a
 * fresh kernel. A run that fails without any cell error (a timeout, the page or the kernel connection)
 * is tried once more, and says so; a cell error or a failed check is never retried.
 */
async function runInBrowser(selected: string[], jupyter: string): Promise<void> {
  const chromium = await ensureChromium();
  const before = new Map(selected.map((n) => [n, Deno.readTextFileSync(`${NOTEBOOKS}/${n}`)]));
  const server = await startJupyterServer({ jupyter, root: ROOT, log: `${OUT}/jupyter-server.log` });
  let browser: Awaited<ReturnType<typeof puppeteer.launch>> | null = null;
  const stopAll = async () => {
    await browser?.close().catch(() => {});
    await server.stop();
  };
  const onSignal = () => stopAll().finally(() => Deno.exit(130));
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  const results: Result[] = [];
  const failures: string[] = [];
  try {
    console.log(`notebooks: Jupyter on ${server.base} (log: ${server.log.replace(`${ROOT}/`, "")})`);
    browser = await puppeteer.launch({
      executablePath: chromium,
      headless: true,
      // root cannot use Chromium's sandbox; the page is our own local server.
      args: [...(Deno.uid() === 0 ? ["--no-sandbox"] : []), "--disable-gpu", "--disable-dev-shm-usage"],
    });
    for (const name of selected) {
      const source = JSON.parse(before.get(name)!);
      const screenshot = `${OUT}/${name.replace(/\.ipynb$/, ".png")}`;
      let run: NotebookRun | null = null;
      for (let attempt = 1; attempt <= ATTEMPTS; attempt++) {
        console.log(`notebooks: ${name} in Chromium ...`);
        const logStart = Deno.statSync(server.log).size;
        run = await runNotebookInBrowser(browser, {
          name,
          url: server.url(`/notebooks/notebooks/${name}`),
          serverBase: server.base,
          screenshot,
          timeoutS: NOTEBOOK_TIMEOUT_S,
          abort: () => protocolError(server.log, logStart),
        });
        await closeSessions(server);
        if (!run.failure || run.cells.some((c) => c.error)) break;
        if (attempt < ATTEMPTS) {
          console.log(`notebooks: ${name} did not complete (${run.failure}); running it again`);
        }
      }
      const problems = judge(run!, source);
      const stem = name.replace(/\.ipynb$/, "");
      const figures = run!.cells.reduce((a, c) => a + c.figures, 0);
      const live = run!.cells.filter((c) => c.updatesBeforeReply > 0).length;
      if (Object.keys(run!.notebook).length) {
        run!.notebook.metadata = {
          ...(run!.notebook.metadata as object),
          qlora_lab: { run_seconds: +run!.seconds.toFixed(2), browser: true },
        };
        await writeFileAtomic(
          `${OUT}/${stem}${problems.length ? ".failed" : ""}.ipynb`,
          JSON.stringify(run!.notebook, null, 1) + "\n",
        );
      }
      results.push({ name, seconds: run!.seconds, figures, live, screenshot });
      if (problems.length) {
        failures.push(name);
        console.error(
          `notebooks: ${name} FAILED after ${run!.seconds.toFixed(1)} s (screenshot: ${screenshot}):`,
        );
        for (const p of problems) console.error(`  - ${p.replaceAll("\n", "\n    ")}`);
        continue;
      }
      const slow = run!.cells.filter((c) => c.seconds > 2).map((c) => `${c.id} ${c.seconds.toFixed(1)} s`);
      const over = run!.seconds > BUDGET_S ? `  (over the ${BUDGET_S} s budget)` : "";
      console.log(
        `notebooks: ${name} ok in ${run!.seconds.toFixed(1)} s, ${figures} figures drawn, ${live} live ` +
          `displays${slow.length ? ` (cells over 2 s: ${slow.join(", ")})` : ""}${over}`,
      );
    }
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    await stopAll();
  }
  for (const [name, text] of before) {
    if (Deno.readTextFileSync(`${NOTEBOOKS}/${name}`) !== text) {
      fail(`notebooks/${name} changed during the browser run (saved by the page, or edited meanwhile)`);
    }
  }
  const passed = selected.filter((n) => !failures.includes(n)).map((n) => `${OUT}/${n}`);
  if (passed.length) {
    const r = await exec(jupyter, [
      "nbconvert",
      "--to",
      "html",
      "--template",
      "lab",
      "--log-level",
      "WARN",
      ...passed,
    ], {
      quiet: true,
    });
    if (r.code !== 0) fail(`jupyter nbconvert --to html failed:\n${r.stderr}${r.stdout}`);
    for (const p of passed) checkHtml(p.replace(/\.ipynb$/, ".html"));
  }
  printSummary(results);
  if (failures.length) {
    fail(`${failures.length} of ${selected.length} notebooks failed: ${failures.join(", ")}`);
  }
}

async function runNotebooks(args: string[]): Promise<void> {
  const { positional: names, flags } = parseArgs(args, { nbclient: "boolean", plain: "boolean" });
  const plain = flags.plain === true;
  const nbclient = plain || flags.nbclient === true;
  const jupyter = (await findJupyter()) ?? fail("Jupyter is missing: run ./deno task kernel first");
  const selected = selectNotebooks(names, jupyter);
  Deno.mkdirSync(OUT, { recursive: true });
  await typeCheck(selected);
  if (nbclient) await runWithNbclient(selected, jupyter, plain);
  else await runInBrowser(selected, jupyter);
}

/** `./deno task jupyter`: the classic Notebook at the repository root until Ctrl+C. */
async function serve(args: string[]): Promise<void> {
  const { positional, flags } = parseArgs(args, { port: "string" });
  if (positional.length) throw new UsageError(`unexpected argument ${positional[0]}`);
  const port = flags.port === undefined ? 8888 : Number(flags.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    fail(`--port wants a port number, got ${flags.port}`);
  }
  await installKernel();
  const jupyter = (await findJupyter()) ?? fail("Jupyter is missing: run ./deno task kernel first");
  let chosen = port;
  try {
    Deno.listen({ hostname: "127.0.0.1", port }).close();
  } catch {
    chosen = 0; // taken: any free port
  }
  const server = await startJupyterServer({ jupyter, root: ROOT, port: chosen, log: `${OUT}/jupyter.log` });
  const version = (await exec(jupyter, ["notebook", "--version"], { quiet: true })).stdout.trim();
  console.log(`
Jupyter Notebook ${version} is serving ${ROOT} on ${server.base} (this machine only).
Open the notebooks (the token in the URL logs you in):

    ${server.url("/tree/notebooks")}

Open one, then Cell > Run All; the kernel is "Deno". Stop with Ctrl+C: it stops the server and its kernels.
Server log: ${server.log}`);
  let stopping = false;
  const onSignal = () => {
    if (stopping) return;
    stopping = true;
    console.log("\njupyter: stopping the server and its kernels ...");
    void server.stop();
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  const code = await server.exited;
  if (!stopping) fail(`the Jupyter server exited on its own (status ${code}); see ${server.log}`);
  console.log("jupyter: stopped");
  Deno.exit(0);
}

const USAGE = helpText([
  "./deno task kernel                                             (scripts/notebooks.ts install)",
  "./deno task notebooks [--nbclient | --plain] [NAME.ipynb...]   (scripts/notebooks.ts run)",
  "./deno task jupyter [--port N]                                 (scripts/notebooks.ts serve)",
], [
  ["NAME.ipynb...", "run: the notebooks to run; default every notebooks/*.ipynb"],
  ["--nbclient", "run: headless through nbclient (execute_notebook.py), no browser; default off (Chromium)"],
  ["--plain", "run: through the stock nbclient, as jupyter nbconvert --execute runs them; default off"],
  ["--port N", "serve: the port on 127.0.0.1 (any free one when it is taken); default 8888"],
], [
  "install: Jupyter where missing, and the Deno kernelspec from a stable copy of this Deno.",
  "run: every notebook in Chromium through Jupyter, judged as rendered; outputs under build/notebooks/.",
  "serve: the classic Jupyter Notebook at the repository root on 127.0.0.1 until Ctrl+C.",
]);

if (import.meta.main) {
  await runMain(async () => {
    const [command, ...rest] = Deno.args;
    if (command === "install") {
      const { positional } = parseArgs(rest, {});
      if (positional.length) throw new UsageError(`unexpected argument ${positional[0]}`);
      await installKernel();
    } else if (command === "run") await runNotebooks(rest);
    else if (command === "serve") await serve(rest);
    else {
      throw new UsageError(
        command === undefined ? "expected a command: install, run or serve" : `unknown command ${command}`,
      );
    }
  }, USAGE);
}
