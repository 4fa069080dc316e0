/**
 * How one global batch is shared by the ranks. The config's `batch` is the
 * global batch (what the learning rate is scaled by, Table 1's numbers); rank
 * r takes images [r·b, (r+1)·b) of it, b = batch / ranks, and runs them in
 * micro-batches: global batch = ranks × micro-batch × accumulation steps.
 * Rank r's slice of the data stream, its sample ids (which seed every crop's
 * augmentation) and its iBOT masks are exactly those images' in a one-rank
 * run of the same global batch, which is what makes the two runs equal.
 */
import { InputError } from "../../data/errors.ts";
import { type BatchMasks, masksFrom } from "../train/masking.ts";
import { collective } from "./world.ts";

/** This rank's share of a global batch. */
export interface RankBatch {
  ranks: number;
  rank: number;
  /** Images per optimiser step, all ranks together. */
  global: number;
  /** Images per step on this rank. */
  local: number;
  /** Index of this rank's first image within the global batch. */
  first: number;
  /** Images per forward/backward pass. */
  micro: number;
  /** Passes per step on this rank. */
  accumulation: number;
}

/** Splits `batch` over `ranks`; a split that does not divide evenly is an InputError naming the fix. */
export function rankBatch(
  cfg: { batch: number; microBatch: number },
  comm: { rank: number; size: number },
): RankBatch {
  const ranks = comm.size;
  const local = cfg.batch / ranks;
  const micro = Math.min(cfg.microBatch, local);
  if (!Number.isInteger(local) || local < 2 || local % micro !== 0) {
    const unit = ranks * Math.min(cfg.microBatch, Math.max(2, Math.floor(local)));
    throw collective(
      new InputError(
        `--batch ${cfg.batch} does not split over ${ranks} ranks with --micro-batch ` +
          `${cfg.microBatch}: each rank needs an equal share of at least 2 images that is a ` +
          `multiple of its micro-batch (global batch = ranks × micro-batch × accumulation). ` +
          `Use a --batch that is a multiple of ${unit}, or another number of ranks`,
      ),
    );
  }
  return {
    ranks,
    rank: comm.rank,
    global: cfg.batch,
    local,
    first: comm.rank * local,
    micro,
    accumulation: local / micro,
  };
}

/**
 * This rank's iBOT masks, cut from the global batch's (`global` covers 2·B
 * crops, crop-major: crop 1 of every image, then crop 2): the crops of images
 * [first, first + local), in the same crop-major order.
 */
export function localMasks(
  global: BatchMasks,
  B: number,
  first: number,
  local: number,
): BatchMasks {
  const n = global.masks.length / (2 * B);
  if (!Number.isInteger(n) || first < 0 || first + local > B) {
    throw new RangeError(`localMasks: images [${first}, ${first + local}) of a batch of ${B}`);
  }
  const out = new Uint8Array(2 * local * n);
  for (let c = 0; c < 2; c++) {
    const src = (c * B + first) * n;
    out.set(global.masks.subarray(src, src + local * n), c * local * n);
  }
  return masksFrom(out, 2 * local);
}
