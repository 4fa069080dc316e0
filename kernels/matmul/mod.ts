/**
 * Matrix multiplication, the entry module of `kernels/matmul/` (import from here):
 * `out = residual + scale ⊙ act(alpha · op(A) · op(B) + bias)`, with the epilogue fused into
 * the write-out, in three handwritten WGSL variants (`variants.ts`, `wgsl.ts`):
 *
 * - `reg`: register blocking without workgroup memory or barriers. Each invocation owns a
 *   `tm × tn` block of the output and walks K four at a time with vec4 loads. This is what pays
 *   on llvmpipe, where every storage or workgroup load is a per-lane scalar loop and barriers
 *   are coroutine switches: the only lever is more FMAs per loaded value (bigger blocks).
 * - `tex`: the `reg` kernel reading A and B from rgba32float textures the dispatch copies them
 *   into (`../textures.ts`): on llvmpipe a texel fetch is a branch-free gather where a storage
 *   load is a per-lane loop, which takes the 32×24 block to ~0.6 of the FMA peak.
 * - `tiled`: the classic shared-memory kernel for real GPUs: a `bm × bn` output tile per
 *   workgroup, `bk`-deep slabs of A and B staged in workgroup memory, `tm × tn` outputs per
 *   thread read as vec4 rows from the staged slabs.
 *
 * Which one (and which tile sizes) runs for a shape: the shipped default of the adapter's class
 * (`../defaults.ts`) until tuning on the running adapter (`tuneMatmul`, candidates pruned by the
 * cost model `cost.ts`, cached by `autotune.ts`) measured better; `matmul` only looks it up.
 *
 * Invariants that bite:
 * - vec4 loads are used only where every address they touch is 16-byte aligned relative to the
 *   binding and never straddles a row end (see `vecFlags`); otherwise the kernel is built with
 *   scalar loads. Binding windows start at `minStorageBufferOffsetAlignment` boundaries (a
 *   multiple of 16 bytes), so element offsets keep their residue mod 4 inside the window.
 * - Out-of-range rows and columns are clamped on load (the kernel never reads outside its
 *   window) and masked on store; K tails are handled by a scalar loop (reg) or zero-filled
 *   staging (tiled).
 * - A binding never exceeds `maxStorageBufferBindingSize`: dispatches are split over batches
 *   and then rows (`planChunks`, `plan.ts`); what cannot be split (B itself too large, a
 *   transposed A too large) throws `GpuLimitError`.
 */
export * from "./backward.ts";
export {
  matmul,
  type MatmulEpilogue,
  type MatmulOptions,
  matmulStrided,
  type MatmulStridedSpec,
} from "./dispatch.ts";
export * from "./reference.ts";
export * from "./tune.ts";
export * from "./cost.ts";
export { texEligible } from "./dispatch.ts";
export {
  candidateTag,
  classDefaults,
  defaultKey,
  defaultRole,
  FALLBACK_VARIANT,
  fitVariant,
  MATMUL_CANDIDATES,
  type MatmulInternal,
  type MatmulShape,
  matmulTuner,
  type MatmulVariant,
  parseVariant,
  selectMatmulVariant,
  SHAPE_CLASS_CAP,
  shapeClass,
  variantId,
} from "./variants.ts";
