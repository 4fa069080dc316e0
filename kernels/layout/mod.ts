/**
 * Layout: the kernels that move elements without arithmetic, one file per op
 * family, all built on the strided-map engine (`../strided_map.ts`) or on
 * their own copy kernels:
 *
 * - `permute.ts`: permute, transpose;
 * - `slice.ts`: slice, its backward, concat;
 * - `gather.ts`: row gather and scatter by index;
 * - `mask.ts`: DINOv2's mask-token rows.
 *
 * Import from here; the files are the op families' homes.
 */
export * from "./gather.ts";
export * from "./mask.ts";
export * from "./permute.ts";
export * from "./slice.ts";
