/**
 * Charts for notebooks: plotly figures that render in Deno's Jupyter kernel, in VS Code, in JupyterLab
 * and in nbconvert's HTML export, offline. A {@linkcode Figure} is a cell's value like any other: its
 * `[JUPYTER_DISPLAY]()` method returns a MIME bundle with the plotly JSON
 * (`application/vnd.plotly.v1+json`, for front ends with a plotly renderer), a `text/html` rendering (a
 * div, plus plotly.js itself inlined from the npm package `plotly.js-dist-min` the first time a figure is
 * shown in a kernel session) and `text/plain` (a one-line summary).
 *
 * The bundle is built synchronously, with no `await` between the cell's value and the kernel's reply:
 * plotly.js (4.8 MB of text) is imported with this module, not on first use. A display computed after an
 * asynchronous step can reach the kernel after the cell's `execute_reply`, and a client that has moved
 * on to the next cell (plain nbclient, `jupyter nbconvert --execute`) drops it (measured: the first four
 * of eight figures lost). Importing the text costs about 0.1 s; Deno fetches the package from the npm
 * registry once, then works from its cache.
 *
 * @example
 * ```ts
 * import { barChart } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const fig = barChart(["full", "LoRA r=8"], { trainable: [16_777_216, 65_536] }, { yTitle: "parameters" });
 * assert(fig.data.length === 1 && fig.toString().includes("bar"));
 * ```
 *
 * @module
 */

// deno-lint-ignore no-import-prefix -- a full specifier: mod.ts imports from any folder, no deno.json needed
import plotlySource from "npm:plotly.js-dist-min@3.3.0/plotly.min.js" with { type: "text" };
import { InvalidArgumentError } from "../base/mod.ts";
import { JUPYTER_DISPLAY } from "../core/mod.ts";

/** One plotly trace (`{ type: "bar", x, y, name }`, ...): see https://plotly.com/javascript/reference/. */
export type PlotlyTrace = Record<string, unknown>;

/** A plotly layout (`{ title, xaxis, yaxis, ... }`). */
export type PlotlyLayout = Record<string, unknown>;

/** The MIME type of plotly figures in Jupyter. */
export const PLOTLY_MIME = "application/vnd.plotly.v1+json";

/** Options shared by the chart helpers. */
export interface ChartOptions {
  /** Figure title. */
  title?: string;
  /** X axis title. */
  xTitle?: string;
  /** Y axis title. */
  yTitle?: string;
  /** Logarithmic x axis. */
  logX?: boolean;
  /** Logarithmic y axis. */
  logY?: boolean;
  /** Height in pixels (default 420). */
  height?: number;
  /** Extra layout fields, merged over the ones the helper sets. */
  layout?: PlotlyLayout;
}

let plotlyIncluded = false;

/**
 * The source of plotly.js (minified), from the npm package `plotly.js-dist-min`, imported with this module.
 *
 * @example
 * ```ts
 * import { plotlyJs } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * assert((await plotlyJs()).includes("window.Plotly"));
 * ```
 */
export function plotlyJs(): Promise<string> {
  return Promise.resolve(plotlySource);
}

/**
 * Makes the next figure rendered to HTML carry plotly.js again. Figures inline plotly.js once per kernel
 * session (the first one shown); call this after clearing a notebook's outputs without restarting it.
 *
 * @example
 * ```ts
 * import { resetPlotlyInclusion } from "../../mod.ts";
 * resetPlotlyInclusion();
 * ```
 */
export function resetPlotlyInclusion(): void {
  plotlyIncluded = false;
}

const escapeHtml = (s: string) =>
  s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

// JSON inside <script>: "</script>" or "<!--" in a string must not end or confuse the element.
const scriptJson = (value: unknown) =>
  JSON.stringify(value).replace(/</g, "\\u003c").replace(/\u2028/g, "\\u2028").replace(/\u2029/g, "\\u2029");

function titleText(layout: PlotlyLayout): string | undefined {
  const t = layout.title;
  if (typeof t === "string") return t;
  if (t && typeof t === "object" && typeof (t as { text?: unknown }).text === "string") {
    return (t as { text: string }).text;
  }
  return undefined;
}

/**
 * A plotly figure: traces, layout and config, rendered by Jupyter front ends through its MIME bundle.
 *
 * @example
 * ```ts
 * import { Figure } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const fig = new Figure([{ type: "bar", name: "bytes", x: ["full", "qlora"], y: [16, 4] }], { title: "memory" });
 * assertEquals(fig.toString(), 'Figure "memory": bar "bytes" (2 points)');
 * assertEquals(fig.toJSON().data[0].y, [16, 4]);
 * assertEquals(fig.config.displaylogo, false);
 * ```
 */
export class Figure {
  /** The traces. */
  readonly data: PlotlyTrace[];
  /** The layout. */
  readonly layout: PlotlyLayout;
  /** plotly config (`{ responsive: true, displaylogo: false }` by default). */
  readonly config: Record<string, unknown>;

  /** A figure from plotly traces and layout. */
  constructor(data: PlotlyTrace[], layout: PlotlyLayout = {}, config: Record<string, unknown> = {}) {
    if (!Array.isArray(data)) {
      throw new InvalidArgumentError("Cannot create a figure: data must be an array of plotly traces");
    }
    this.data = data;
    this.layout = layout;
    this.config = { responsive: true, displaylogo: false, ...config };
  }

  /** `{ data, layout }`: the plotly JSON of the figure. */
  toJSON(): { data: PlotlyTrace[]; layout: PlotlyLayout } {
    return { data: this.data, layout: this.layout };
  }

  /** One line: the title and each trace's type, name and number of points. */
  toString(): string {
    const traces = this.data.map((t) => {
      const n = Array.isArray(t.y) ? t.y.length : Array.isArray(t.x) ? t.x.length : 0;
      return `${t.type ?? "scatter"}${t.name !== undefined ? ` "${t.name}"` : ""} (${n} points)`;
    });
    const title = titleText(this.layout);
    return `Figure${title ? ` "${title}"` : ""}: ${traces.join(", ") || "no traces"}`;
  }

  /**
   * An HTML rendering: a div and the script that draws into it. With `includePlotlyJs`, plotly.js
   * itself is inlined first (4.8 MB); without it, the script waits for `window.Plotly`.
   *
   * @example
   * ```ts
   * import { plot } from "../../mod.ts";
   * import { assert } from "@std/assert";
   * const html = await plot([{ type: "bar", x: ["a"], y: [1] }]).toHTML({ includePlotlyJs: false });
   * assert(html.includes("Plotly.newPlot") && !html.includes("window.Plotly = Plotly"));
   * ```
   */
  toHTML(options: { includePlotlyJs?: boolean } = {}): Promise<string> {
    return Promise.resolve(this.#html(options.includePlotlyJs === true));
  }

  // The HTML of toHTML, synchronously: the Jupyter bundle must not wait on anything (see the module doc).
  #html(includePlotlyJs: boolean): string {
    const id = `qlora-plot-${crypto.randomUUID()}`;
    const height = typeof this.layout.height === "number" ? this.layout.height : 420;
    const lib = includePlotlyJs ? `<script type="text/javascript">${plotlySource}</script>\n` : "";
    const draw = `(function () {
  var fig = ${scriptJson({ data: this.data, layout: this.layout, config: this.config })};
  var tries = 0;
  function draw() {
    var el = document.getElementById(${JSON.stringify(id)});
    if (window.Plotly && el) { window.Plotly.newPlot(el, fig.data, fig.layout, fig.config); return; }
    if (++tries < 200) { setTimeout(draw, 50); return; }
    if (el) el.textContent = "plotly.js is not loaded on this page: re-run the notebook from the top";
  }
  draw();
})();`;
    return `${lib}<div id="${id}" class="qlora-plot" style="width:100%;height:${height}px" title="${
      escapeHtml(this.toString())
    }"></div>\n<script type="text/javascript">${draw}</script>`;
  }

  /**
   * The MIME bundle Jupyter shows: plotly JSON, HTML (plotly.js inlined with the first figure of the
   * kernel session) and plain text, built synchronously so that it reaches the kernel before the cell's
   * reply.
   *
   * @example
   * ```ts
   * import { JUPYTER_DISPLAY, PLOTLY_MIME, plot } from "../../mod.ts";
   * import { assert } from "@std/assert";
   * const bundle = plot([{ type: "scatter", x: [1, 2], y: [3, 4] }])[JUPYTER_DISPLAY]();
   * assert(PLOTLY_MIME in bundle && "text/html" in bundle && "text/plain" in bundle);
   * ```
   */
  [JUPYTER_DISPLAY](): Record<string, unknown> {
    const include = !plotlyIncluded;
    const html = this.#html(include);
    plotlyIncluded = true;
    return {
      [PLOTLY_MIME]: { data: this.data, layout: this.layout, config: this.config },
      "text/html": html,
      "text/plain": this.toString(),
    };
  }
}

/** Options of {@linkcode show}. */
export interface ShowOptions {
  /**
   * Where the bundle goes (default: `Deno.jupyter.display` inside Deno's Jupyter kernel; outside it,
   * the figure's one-line text is printed). For tests and other front ends.
   */
  display?: (bundle: Record<string, unknown>, options: { raw: true }) => Promise<void> | void;
  /** Waits for a while (default: a timer); for tests. */
  sleep?: (ms: number) => Promise<void>;
}

/**
 * Milliseconds {@linkcode show} waits after a display of `bytes` bytes: 50 ms plus 1 ms per 2 KB
 * (2 MB/s). `Deno.jupyter.display` resolves when the kernel has queued the message, not when it is on
 * the wire: measured on a 2-core machine under load, the 4.8 MB bundle that carries plotly.js reached
 * the client up to 0.5 s later (about 10 MB/s), after the cell's `idle` status, and a client that had
 * moved on to the next cell (plain nbclient, `jupyter nbconvert --execute`) dropped it and, queued
 * behind it, the next figures. A 1 s wait after it was always enough; this waits 2.5 s for it, and
 * 55-80 ms for a figure without plotly.js.
 *
 * @example
 * ```ts
 * import { flushDelayMs } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * assertEquals(flushDelayMs(0), 50);
 * assertEquals(flushDelayMs(4_000_000), 2050);
 * ```
 */
export function flushDelayMs(bytes: number): number {
  return 50 + Math.ceil(bytes / 2000);
}

function kernelDisplay(): ShowOptions["display"] | null {
  try {
    // Reading Deno.jupyter outside the kernel throws: only touch it here, at run time.
    const j =
      (Deno as unknown as { jupyter?: { display?: (b: unknown, o: unknown) => Promise<void> } }).jupyter;
    return typeof j?.display === "function" ? (b, o) => j.display!(b, o) : null;
  } catch {
    return null;
  }
}

const bundleBytes = (bundle: Record<string, unknown>) =>
  Object.values(bundle).reduce<number>(
    (n, v) => n + (typeof v === "string" ? v.length : JSON.stringify(v).length),
    0,
  );

/**
 * Shows a figure in the notebook and returns once it has reached the front end: `await show(fig)` as a
 * cell's last statement is the way to put a chart in a notebook that also runs headless. A figure left
 * as a cell's value also renders in a live notebook, but Deno's kernel (2.9) can publish that value
 * after the cell's reply, and plain nbclient (`jupyter nbconvert --execute`) then loses it; see
 * {@linkcode flushDelayMs} for the wait and why. Outside the kernel, prints the figure's one-line text.
 *
 * @example
 * ```ts
 * import { plot, show } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const shown: string[] = [];
 * const waits: number[] = [];
 * await show(plot([{ type: "bar", x: ["a"], y: [1] }], { title: "one" }), {
 *   display: (bundle) => void shown.push(String(bundle["text/plain"])),
 *   sleep: (ms) => Promise.resolve(void waits.push(ms)),
 * });
 * assertEquals(shown, ['Figure "one": bar (1 points)']);
 * assertEquals(waits.length, 1);
 * ```
 */
export async function show(figure: Figure, options: ShowOptions = {}): Promise<void> {
  const display = options.display ?? kernelDisplay();
  if (!display) {
    console.log(figure.toString());
    return;
  }
  const bundle = figure[JUPYTER_DISPLAY]();
  await display(bundle, { raw: true });
  const sleep = options.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  await sleep(flushDelayMs(bundleBytes(bundle)));
}

/**
 * One output of a notebook cell updated in place while the cell runs: a figure redrawn as data arrives (a
 * KV cache growing token by token), or text streamed as a model writes it. The first `show` displays it,
 * each later one replaces it (`Deno.jupyter.display` with a display id); each waits, as {@linkcode show}
 * does, until the bundle has left the kernel. Outside the kernel it prints nothing (the caller's own
 * output goes to the console).
 *
 * @example
 * ```ts
 * import { LiveDisplay, plot } from "../../mod.ts";
 * import { assertEquals } from "@std/assert";
 * const sent: [string, boolean][] = [];
 * const live = new LiveDisplay({
 *   display: (bundle, options) => void sent.push([String(bundle["text/plain"]), options.update]),
 *   sleep: () => Promise.resolve(),
 * });
 * await live.text("The state of the");
 * await live.text("The state of the Union");
 * await live.show(plot([{ type: "bar", x: ["a"], y: [1] }], { title: "done" }));
 * assertEquals(sent, [["The state of the", false], ["The state of the Union", true], ['Figure "done": bar (1 points)', true]]);
 * ```
 */
export class LiveDisplay {
  readonly #id = `qlora-live-${crypto.randomUUID()}`;
  readonly #display: LiveDisplayOptions["display"] | null;
  readonly #sleep: (ms: number) => Promise<void>;
  #shown = false;

  /** A display that appears on its first `show` or `text`. */
  constructor(options: LiveDisplayOptions = {}) {
    this.#display = options.display ?? liveKernelDisplay();
    this.#sleep = options.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  }

  /** Shows (then replaces) the output with a figure, or any object with a Jupyter MIME bundle. */
  async show(content: { [JUPYTER_DISPLAY](): Record<string, unknown> }): Promise<void> {
    if (!this.#display) return;
    const bundle = content[JUPYTER_DISPLAY]();
    await this.#display(bundle, { raw: true, display_id: this.#id, update: this.#shown });
    this.#shown = true;
    await this.#sleep(flushDelayMs(bundleBytes(bundle)));
  }

  /** Shows (then replaces) the output with preformatted text. */
  text(text: string): Promise<void> {
    return this.show({
      [JUPYTER_DISPLAY]: () => ({
        "text/plain": text,
        "text/html": `<pre style="white-space: pre-wrap">${escapeHtml(text)}</pre>`,
      }),
    });
  }
}

/** Options of {@linkcode LiveDisplay}. */
export interface LiveDisplayOptions {
  /** Where bundles go (default: `Deno.jupyter.display` in Deno's kernel, else nowhere); for tests. */
  display?: (
    bundle: Record<string, unknown>,
    options: { raw: true; display_id: string; update: boolean },
  ) => Promise<void> | void;
  /** Waits for a while (default: a timer); for tests. */
  sleep?: (ms: number) => Promise<void>;
}

function liveKernelDisplay(): LiveDisplayOptions["display"] | null {
  const display = kernelDisplay();
  return display ? (bundle, options) => display(bundle, options as unknown as { raw: true }) : null;
}

/**
 * A figure from plotly traces and layout, shown when it is a cell's value.
 *
 * @example
 * ```ts
 * import { plot } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const fig = plot([{ type: "scatter", mode: "lines", x: [1, 2, 3], y: [1, 4, 9], name: "x²" }], {
 *   title: "squares",
 * });
 * assert(fig.toString() === 'Figure "squares": scatter "x²" (3 points)');
 * ```
 */
export function plot(
  data: PlotlyTrace[],
  layout: PlotlyLayout = {},
  config: Record<string, unknown> = {},
): Figure {
  return new Figure(data, layout, config);
}

function baseLayout(options: ChartOptions, extra: PlotlyLayout = {}): PlotlyLayout {
  return {
    ...(options.title ? { title: { text: options.title } } : {}),
    xaxis: { title: { text: options.xTitle ?? "" }, ...(options.logX ? { type: "log" } : {}) },
    yaxis: { title: { text: options.yTitle ?? "" }, ...(options.logY ? { type: "log" } : {}) },
    height: options.height ?? 420,
    margin: { t: options.title ? 60 : 30, r: 20, b: 60, l: 70 },
    template: { layout: { font: { family: "sans-serif" } } },
    ...extra,
    ...options.layout,
  };
}

function checkSeries(x: ArrayLike<unknown>, series: Record<string, ArrayLike<number>>, what: string): void {
  const names = Object.keys(series);
  if (names.length === 0) throw new InvalidArgumentError(`Cannot draw ${what}: no series given`);
  for (const name of names) {
    if (series[name].length !== x.length) {
      throw new InvalidArgumentError(
        `Cannot draw ${what}: series "${name}" has ${series[name].length} values for ${x.length} x values`,
      );
    }
  }
}

/**
 * Grouped bars: one bar per category and series.
 *
 * @example
 * ```ts
 * import { barChart } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const fig = barChart(["7B", "65B"], { "f32 absmax": [3.5, 32.5], "double quant": [0.9, 8.1] }, {
 *   yTitle: "GB of constants",
 * });
 * assert(fig.data.length === 2 && fig.layout.barmode === "group");
 * ```
 */
export function barChart(
  categories: readonly (string | number)[],
  series: Record<string, ArrayLike<number>>,
  options: ChartOptions & { stacked?: boolean } = {},
): Figure {
  checkSeries(categories, series, "a bar chart");
  const data = Object.entries(series).map(([name, y]) => ({
    type: "bar",
    name,
    x: [...categories],
    y: Array.from(y),
  }));
  return new Figure(
    data,
    baseLayout(options, { barmode: options.stacked ? "stack" : "group", showlegend: data.length > 1 }),
  );
}

/**
 * Lines over a shared x axis, one per series (with markers when there are few points).
 *
 * @example
 * ```ts
 * import { lineChart } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const ranks = [1, 2, 4, 8];
 * const fig = lineChart(ranks, { trainable: ranks.map((r) => r * 8192) }, { logX: true });
 * assert(fig.data[0].mode === "lines+markers");
 * ```
 */
export function lineChart(
  x: ArrayLike<number>,
  series: Record<string, ArrayLike<number>>,
  options: ChartOptions = {},
): Figure {
  checkSeries(x, series, "a line chart");
  const xs = Array.from(x);
  const data = Object.entries(series).map(([name, y]) => ({
    type: "scatter",
    mode: xs.length <= 40 ? "lines+markers" : "lines",
    name,
    x: xs,
    y: Array.from(y),
  }));
  return new Figure(data, baseLayout(options, { showlegend: data.length > 1 }));
}

/** Bin counts of a histogram, computed in TypeScript (a figure carries the bins, not every sample). */
export interface Histogram {
  /** Bin centres. */
  centers: number[];
  /** Bin width. */
  width: number;
  /** Fraction of the samples per unit of x (integrates to 1 over the bins, samples outside excluded). */
  density: number[];
  /** Samples per bin. */
  counts: number[];
}

/**
 * Counts samples in `bins` equal bins over [min, max] (default: the samples' range).
 *
 * @example
 * ```ts
 * import { histogram } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const h = histogram(new Float32Array([0, 0.1, 0.9, 1]), { bins: 2 });
 * assert(h.counts[0] === 2 && h.counts[1] === 2 && h.width === 0.5);
 * ```
 */
export function histogram(
  samples: ArrayLike<number>,
  options: { bins?: number; min?: number; max?: number } = {},
): Histogram {
  const bins = options.bins ?? 100;
  if (!Number.isInteger(bins) || bins < 1) {
    throw new InvalidArgumentError(
      `Cannot compute a histogram: bins must be a positive integer, got ${bins}`,
    );
  }
  let min = options.min, max = options.max;
  if (min === undefined || max === undefined) {
    let lo = Infinity, hi = -Infinity;
    for (let i = 0; i < samples.length; i++) {
      const v = samples[i];
      if (v < lo) lo = v;
      if (v > hi) hi = v;
    }
    min ??= lo;
    max ??= hi;
  }
  if (!(Number.isFinite(min) && Number.isFinite(max) && max > min)) {
    throw new InvalidArgumentError(`Cannot compute a histogram over [${min}, ${max}]`);
  }
  const width = (max - min) / bins;
  const counts = new Array<number>(bins).fill(0);
  for (let i = 0; i < samples.length; i++) {
    const v = samples[i];
    if (!(v >= min && v <= max)) continue;
    counts[Math.min(bins - 1, Math.floor((v - min) / width))]++;
  }
  const total = samples.length * width;
  return {
    centers: counts.map((_, i) => min + (i + 0.5) * width),
    width,
    counts,
    density: counts.map((c) => c / total),
  };
}

/**
 * Overlaid histograms (as densities) of one or more sample sets over common bins.
 *
 * @example
 * ```ts
 * import { histogramChart } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const fig = histogramChart({ a: [0, 1, 1, 2] }, { bins: 4 });
 * assert(fig.data[0].type === "bar" && (fig.data[0].y as number[]).length === 4);
 * ```
 */
export function histogramChart(
  series: Record<string, ArrayLike<number>>,
  options: ChartOptions & { bins?: number; min?: number; max?: number } = {},
): Figure {
  const names = Object.keys(series);
  if (names.length === 0) throw new InvalidArgumentError("Cannot draw a histogram: no series given");
  let lo = options.min ?? Infinity, hi = options.max ?? -Infinity;
  if (options.min === undefined || options.max === undefined) {
    for (const s of Object.values(series)) {
      for (let i = 0; i < s.length; i++) {
        if (options.min === undefined && s[i] < lo) lo = s[i];
        if (options.max === undefined && s[i] > hi) hi = s[i];
      }
    }
  }
  const data = names.map((name) => {
    const h = histogram(series[name], { bins: options.bins, min: lo, max: hi });
    return {
      type: "bar",
      name,
      x: h.centers,
      y: h.density,
      width: h.width,
      opacity: names.length > 1 ? 0.6 : 1,
    };
  });
  return new Figure(
    data,
    baseLayout({ yTitle: "density", ...options }, {
      barmode: "overlay",
      bargap: 0,
      showlegend: names.length > 1,
    }),
  );
}
