/**
 * What one training step measured ({@linkcode StepInfo}), and {@linkcode TrainingProgress}, its live
 * display: a bar in a terminal, or a table updated in place in a Jupyter notebook.
 *
 * @module
 */

import { formatBytes, JUPYTER_DISPLAY } from "../core/mod.ts";

/** What one step measured. */
export interface StepInfo {
  /** 1-based step. */
  step: number;
  /** Of this many. */
  steps: number;
  /** Mean training loss of the step's micro-batches. */
  loss: number;
  /** Learning rate used. */
  lr: number;
  /** Gradient norm before clipping. */
  gradNorm: number;
  /** Training tokens per second in this step. */
  tokensPerSecond: number;
  /** Milliseconds since training began. */
  elapsedMs: number;
  /** Device bytes in use after the step, and the peak during it, by category and in total. */
  memory: {
    current: Record<string, number>;
    peak: Record<string, number>;
    totalCurrent: number;
    totalPeak: number;
  };
  /** Validation loss, when evaluated at this step. */
  evalLoss?: number;
  /** exp(evalLoss). */
  evalPerplexity?: number;
}

/**
 * A live progress display: a bar on stderr in a terminal, or a table updated in place in a Jupyter
 * notebook (Deno kernel). Pass its `update` as `onStep`.
 *
 * @example
 * ```ts
 * import { TrainingProgress } from "../../mod.ts";
 * import { assert } from "@std/assert";
 * const progress = new TrainingProgress("lora");
 * assert(typeof progress.update === "function");
 * assert(progress.line() === "lora: not started");
 * ```
 */
export class TrainingProgress {
  readonly #label: string;
  #last: StepInfo | null = null;
  #displayId = `qlora-progress-${Math.random().toString(36).slice(2)}`;
  #shown = false;

  /** A display labelled with the run's name. */
  constructor(label: string) {
    this.#label = label;
  }

  /** Shows one step. */
  update = (info: StepInfo): void => {
    this.#last = info;
    const jupyter = notebookDisplay();
    if (jupyter) {
      jupyter(this[JUPYTER_DISPLAY](), { raw: true, display_id: this.#displayId, update: this.#shown });
      this.#shown = true;
    } else if (Deno.stderr.isTerminal()) {
      Deno.stderr.writeSync(
        new TextEncoder().encode(`\r\x1b[K${this.line()}${info.step === info.steps ? "\n" : ""}`),
      );
    }
  };

  /** The last step as one line of text. */
  line(): string {
    const i = this.#last;
    if (!i) return `${this.#label}: not started`;
    const width = 20, filled = Math.round((i.step / i.steps) * width);
    const evalPart = i.evalLoss !== undefined
      ? ` eval ${i.evalLoss.toFixed(3)} (ppl ${i.evalPerplexity!.toFixed(1)})`
      : "";
    return `${this.#label} [${"#".repeat(filled)}${" ".repeat(width - filled)}] ${i.step}/${i.steps} loss ${
      i.loss.toFixed(3)
    }${evalPart} lr ${i.lr.toExponential(1)} ${Math.round(i.tokensPerSecond)} tok/s peak ${
      formatBytes(i.memory.totalPeak)
    }`;
  }

  /** Rendering in a notebook. */
  [JUPYTER_DISPLAY](): Record<string, string> {
    return { "text/plain": this.line(), "text/html": `<pre>${this.line()}</pre>` };
  }
}

type DisplayFn = (bundle: Record<string, string>, options: Record<string, unknown>) => void;

function notebookDisplay(): DisplayFn | null {
  try {
    // Reading Deno.jupyter outside the kernel throws: only touch it here, at run time.
    const j = (Deno as unknown as { jupyter?: { display?: DisplayFn } }).jupyter;
    return typeof j?.display === "function" ? j.display.bind(j) : null;
  } catch {
    return null;
  }
}
