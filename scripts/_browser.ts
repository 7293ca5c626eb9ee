/**
 * Runs one notebook the way a person does: Chromium (Debian's, driven by `puppeteer-core`) opens it in
 * the classic Jupyter Notebook, runs all cells, waits for the kernel, and the page is then read as it
 * is rendered. Used by `./deno task notebooks` (scripts/notebooks.ts), which owns the server.
 *
 * What a run records, for notebooks.ts to judge: each code cell's error (if any), stderr text and
 * rendered text; every plotly figure in the outputs and whether it was drawn as an SVG plot in the
 * page; per cell, how many display updates reached the page before its execute_reply (the judge
 * requires one for each cell tagged `live-progress`); any request the page made to a host other than the server; the executed
 * notebook (nbformat JSON, outputs included) and a full-page screenshot.
 *
 * @module
 */

import type { Browser, Page } from "puppeteer-core";

/** The tag that marks a cell whose display must update while it runs. */
export const LIVE_TAG = "live-progress";

/** What one code cell did in the browser. */
export interface CellReport {
  /** The cell's id in the notebook file. */
  id: string;
  /** Its tags (cell metadata). */
  tags: string[];
  /** `ename: evalue` and the traceback of an error output, or null. */
  error: string | null;
  /** Text of its stderr stream outputs ("" when none). */
  stderr: string;
  /** Its outputs as rendered in the page (innerText). */
  text: string;
  /** Plotly figures among its outputs (outputs carrying the plotly MIME type). */
  figures: number;
  /** Of those, the ones drawn in the page: a `.js-plotly-plot` holding an SVG with traces. */
  drawn: number;
  /** Display updates (`update_display_data`) that arrived before the cell's execute_reply. */
  updatesBeforeReply: number;
  /** Seconds from the kernel taking the cell up to its reply. */
  seconds: number;
}

/** The result of one notebook in the browser. */
export interface NotebookRun {
  name: string;
  seconds: number;
  cells: CellReport[];
  /** URLs the page requested from anywhere but the Jupyter server. */
  external: string[];
  /** The executed notebook (nbformat 4 JSON with outputs). */
  notebook: Record<string, unknown>;
  /** Set when the run did not complete (a timeout, a page or kernel failure). */
  failure: string | null;
}

// The page's globals, as far as these scripts use them (classic Notebook 6.4).
// deno-lint-ignore no-explicit-any
type Any = any;

/** Instruments the kernel connection: records every IOPub message and shell reply with its time. */
function instrument(): void {
  const w = window as Any;
  const kernel = w.Jupyter.notebook.kernel;
  const log: { t: number; type: string; parent: string; status?: string }[] = [];
  w.__qloraLog = log;
  const iopub = kernel._handle_iopub_message;
  kernel._handle_iopub_message = function (msg: Any) {
    log.push({ t: performance.now(), type: msg.header.msg_type, parent: msg.parent_header?.msg_id ?? "" });
    return iopub.call(this, msg);
  };
  const shell = kernel._handle_shell_reply;
  kernel._handle_shell_reply = function (msg: Any) {
    log.push({
      t: performance.now(),
      type: msg.header.msg_type,
      parent: msg.parent_header?.msg_id ?? "",
      status: msg.content?.status,
    });
    return shell.call(this, msg);
  };
}

/** A cell's reply status (null until it replied), whether the kernel is idle, ms since its last message. */
function cellState(msgId: string): { status: string | null; idle: boolean; quietMs: number } {
  const w = window as Any;
  const log = w.__qloraLog as { t: number; type: string; parent: string; status?: string }[];
  const reply = log.find((m) => m.parent === msgId && m.type === "execute_reply");
  const last = log.length ? log[log.length - 1].t : 0;
  return {
    status: reply ? reply.status ?? "ok" : null,
    idle: !w.Jupyter.notebook.kernel_busy,
    quietMs: performance.now() - last,
  };
}

/** Reads every code cell: outputs, rendered text, figures drawn, updates seen before the reply. */
function readCells(): CellReport[] {
  const w = window as Any;
  const log = w.__qloraLog as { t: number; type: string; parent: string }[];
  const plotly = "application/vnd.plotly.v1+json";
  const ansi = new RegExp(`${String.fromCharCode(27)}\\[[0-9;]*m`, "g"); // colours in tracebacks
  return w.Jupyter.notebook.get_cells().filter((c: Any) => c.cell_type === "code").map((c: Any) => {
    const outputs: Any[] = c.output_area.outputs;
    const err = outputs.find((o) => o.output_type === "error");
    const msgId = c.last_msg_id ?? "";
    const mine = log.filter((m) => m.parent === msgId);
    const reply = mine.find((m) => m.type === "execute_reply");
    const replyT = reply?.t ?? Infinity;
    const el = c.output_area.element[0];
    const plots = [...el.querySelectorAll(".js-plotly-plot")].filter((p: Any) =>
      p.querySelector("svg.main-svg") && p.querySelectorAll("g.trace").length > 0
    );
    return {
      id: c.id ?? "",
      tags: c.metadata?.tags ?? [],
      error: err
        ? `${err.ename}: ${err.evalue}\n${(err.traceback ?? []).join("\n").replace(ansi, "")}`
        : null,
      stderr: outputs.filter((o) => o.output_type === "stream" && o.name === "stderr").map((o) => o.text)
        .join(""),
      text: el.innerText,
      figures: outputs.filter((o) => o.data && plotly in o.data).length,
      drawn: plots.length,
      updatesBeforeReply: mine.filter((m) => m.type === "update_display_data" && m.t < replyT).length,
      // from the kernel taking the cell up (its first IOPub message: status busy) to the reply
      seconds: reply && mine.length ? (reply.t - mine[0].t) / 1000 : NaN,
    };
  });
}

/** Lets the page grow to its content, so that a full-page screenshot shows the whole notebook. */
function unscroll(): Promise<number> {
  const w = globalThis as Any;
  const style = w.document.createElement("style");
  style.textContent = `
    html, body { height: auto !important; overflow: visible !important; position: static !important; }
    #site { height: auto !important; overflow: visible !important; position: static !important; }
    #header { position: static !important; }
    .notification_widget { display: none !important; }`;
  w.document.head.appendChild(style);
  w.scrollTo(0, 0);
  // two frames: the new layout is in place before the screenshot measures the page
  return new Promise((resolve) =>
    w.requestAnimationFrame(() =>
      w.requestAnimationFrame(() => resolve(w.document.documentElement.scrollHeight))
    )
  );
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Opens `url` (a notebook in the classic Notebook), runs all its cells and reads the result. Each
 * cell starts once the previous one has replied and the kernel has been quiet for `quietS` (Deno's
 * kernel can send a cell's last outputs after its idle status); at most `timeoutS` for all of them,
 * then up to 30 s for the figures to draw. Always writes a screenshot to `screenshot`, also when the
 * run fails.
 */
export async function runNotebookInBrowser(
  browser: Browser,
  options: {
    name: string;
    url: string;
    serverBase: string;
    screenshot: string;
    timeoutS: number;
    quietS?: number;
    onCell?: (done: number, of: number) => void;
    /** Polled while waiting: a reason to give up now (e.g. the server dropped a kernel message), or null. */
    abort?: () => string | null;
  },
): Promise<NotebookRun> {
  const page: Page = await browser.newPage();
  const external: string[] = [];
  page.on("request", (r) => {
    const u = r.url();
    if (!u.startsWith(options.serverBase) && !/^(data|blob|about):/.test(u)) external.push(u);
  });
  const pageErrors: string[] = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  await page.setViewport({ width: 1280, height: 900 });
  const t0 = performance.now();
  let failure: string | null = null;
  let cells: CellReport[] = [];
  let notebook: Record<string, unknown> = {};
  try {
    await page.goto(options.url, { waitUntil: "load", timeout: 60_000 });
    await page.waitForFunction(
      () => {
        const nb = (window as Any).Jupyter?.notebook;
        return nb?._fully_loaded && nb.kernel?.is_connected?.() && nb.kernel.info_reply?.status === "ok";
      },
      { timeout: 120_000, polling: 200 },
    );
    // Never write the committed notebook: no autosave (outputs stay in the page and in build/).
    await page.evaluate(() => (window as Any).Jupyter.notebook.set_autosave_interval(0));
    await page.evaluate(instrument);
    // Run all cells, one at a time: each is sent when the previous one has replied, the kernel is idle
    // and quiet. Deno 2.9's kernel sends a cell's last console lines after its reply, labelled with
    // whatever request it is handling then; with every cell queued at once (Cell > Run All) those lines
    // can land under the next cell. Waiting for quiet keeps each output with its cell, as nbclient does.
    const deadline = performance.now() + options.timeoutS * 1000;
    const count = await page.evaluate(() => (window as Any).Jupyter.notebook.get_cells().length);
    let done = 0;
    const codeCells = await page.evaluate(() =>
      (window as Any).Jupyter.notebook.get_cells().filter((c: Any) => c.cell_type === "code").length
    );
    for (let i = 0; i < count && !failure; i++) {
      const msgId = await page.evaluate((i: number) => {
        const cell = (window as Any).Jupyter.notebook.get_cell(i);
        if (cell.cell_type !== "code") return null;
        cell.execute();
        return cell.last_msg_id as string;
      }, i);
      if (msgId === null) continue;
      while (true) {
        await sleep(100);
        const p = await page.evaluate(cellState, msgId);
        if (p.status !== null && p.idle && p.quietMs > (options.quietS ?? 0.5) * 1000) {
          options.onCell?.(++done, codeCells);
          if (p.status !== "ok") i = count; // Run All stops at an error too
          break;
        }
        if (performance.now() > deadline) {
          failure = `timed out after ${options.timeoutS} s in code cell ${done + 1} of ${codeCells}`;
          break;
        }
        const reason = options.abort?.();
        if (reason) {
          failure = `${reason}, in code cell ${done + 1} of ${codeCells}`;
          break;
        }
      }
    }
    // Figures draw asynchronously (plotly.js is inlined with the first one): give them time.
    const drawDeadline = performance.now() + 30_000;
    while (performance.now() < drawDeadline) {
      cells = await page.evaluate(readCells);
      if (cells.every((c) => c.drawn >= c.figures)) break;
      await sleep(250);
    }
    notebook = await page.evaluate(() => (window as Any).Jupyter.notebook.toJSON());
    if (pageErrors.length) failure ??= `errors in the page: ${pageErrors.join("; ")}`;
  } catch (e) {
    failure = `${(e as Error).message}`;
  } finally {
    try {
      await page.evaluate(unscroll);
      await page.screenshot({ path: options.screenshot as `${string}.png`, fullPage: true });
    } catch (e) {
      failure ??= `no screenshot: ${(e as Error).message}`;
    }
    await page.close();
  }
  return { name: options.name, seconds: (performance.now() - t0) / 1000, cells, external, notebook, failure };
}
