/**
 * Training: the trainer, its schedule and progress, resumable checkpoints and PEFT adapters.
 *
 * @module
 */

export * from "./schedule.ts";
export * from "./training_progress.ts";
export * from "./resume.ts";
export * from "./trainer.ts";
