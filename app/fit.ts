/**
 * What the engine does when the GPU says no (app/worker.ts): a batch that runs
 * out of memory, or past a binding limit, is retried in halves down to one
 * cell; one cell that still fails means the model does not fit this adapter
 * at this input side, and the job stops saying so (every later batch would
 * fail the same way). The same words serve the check pass at load, so a
 * ViT-L or ViT-g too large for the browser's adapter is named with its size
 * instead of taking the tab down. Pure, so the tests drive it under Deno.
 */
import { fmtBytes } from "../kernels/pool.ts";
import { type FailureKind, failureKind } from "./protocol.ts";

/** Whether a failure of `kind` may go away with fewer cells at once. */
export function retriedInHalves(kind: FailureKind): boolean {
  return kind === "oom" || kind === "limit";
}

/** Whether a failure of `kind` with one cell ends the job (it would recur on every batch). */
export function endsJob(kind: FailureKind): boolean {
  return kind !== "other";
}

/**
 * Runs `run` on `items`; when it fails for memory or a limit, on each half in
 * turn (recursively), so a batch too large for the adapter still goes through.
 * Returns the largest part that worked, for the batches after it; rethrows
 * what a single item, or any failure of another kind, throws.
 */
export async function inHalves<T>(
  items: readonly T[],
  run: (part: readonly T[]) => Promise<void>,
): Promise<number> {
  try {
    await run(items);
    return items.length;
  } catch (e) {
    if (items.length < 2 || !retriedInHalves(failureKind(e))) throw e;
  }
  const half = Math.ceil(items.length / 2);
  const a = await inHalves(items.slice(0, half), run);
  const b = await inHalves(items.slice(half), run);
  return Math.max(a, b);
}

/** A model as the "does not fit" message names it. */
export interface ModelSize {
  arch: string;
  /** Backbone parameters. */
  params: number;
}

/** Why a model cannot run on `adapter`, from the error its first cell raised. */
export function doesNotFit(
  model: ModelSize,
  adapter: string,
  inputSize: number,
  e: unknown,
): string {
  const kind = failureKind(e);
  const why = kind === "oom" ? "out of GPU memory" : e instanceof Error ? e.message : String(e);
  const advice = kind === "oom" || kind === "limit"
    ? "; use a smaller model or input side, or the command line on a larger GPU"
    : "";
  const params = model.params >= 1e6 ? `${(model.params / 1e6).toFixed(1)} M` : `${model.params}`;
  return `${model.arch} (${params} parameters, ` +
    `${fmtBytes(4 * model.params)} of weights) does not fit this adapter (${adapter}) at ` +
    `${inputSize} px: ${why}${advice}`;
}
