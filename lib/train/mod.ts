/**
 * Training: the trainer, its schedule and progress, resumable checkpoints and PEFT adapters.
 *
 * @module
 */

export * from "./schedule.ts";
export * from "./training_progress.ts";
export * from "./adapters.ts";
export * from "./training_checkpoint.ts";
export * from "./trainer.ts";
