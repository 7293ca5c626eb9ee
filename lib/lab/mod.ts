/**
 * The measurements of the project: quality studies, statistics, plotly charts, the pretrained tiny base
 * and the linear layer's speed.
 *
 * @module
 */

export * from "./quality.ts";
export * from "./stats.ts";
export * from "./plot.ts";
export * from "./tiny_base.ts";
export * from "./linear_speed.ts";
