/**
 * The caps every reader under data/ enforces, and the allocation budget that
 * holds a reader to a small multiple of the bytes its file actually holds.
 *
 * A length field is checked against the file before anything is allocated
 * for it (file.ts). What is left are things a small file can ask for many
 * times over: a key reused at every nesting level, a blob copied by every
 * call, a rank or depth that multiplies work. Those are capped here, and
 * going past a cap is a LimitError naming the file, the field and the limit.
 * data/README.md states the same numbers.
 */
import { LimitError } from "./errors.ts";

/** Fixed caps (far above anything torch, safetensors, numpy or bloom writes). */
export const LIMITS = {
  /** Characters of a tensor name (a .pth's dict keys joined by dots; DINOv2's longest is ~40). */
  nameChars: 1024,
  /** Container nesting of a .pth (state dicts nest < 10; torch's pickler stops near 1000). */
  nesting: 100,
  /** Tensor rank (torch's own kernels stop at 25 dimensions). */
  rank: 64,
  /** `_rebuild_from_type_v2` wrapping another rebuild call (torch nests it once). */
  rebuildNesting: 8,
  /** Characters of a tar member's path (PATH_MAX). */
  pathChars: 4096,
  /** Bytes of one tar member (one cell image, its label or metadata; 64 MiB). */
  tarMemberBytes: 64 << 20,
  /** Characters of a .pth storage key (torch writes decimal numbers). */
  storageKeyChars: 256,
  /**
   * Bytes a reader may build per byte of the part it parses (torch's pickles
   * cost 20–26 at COST's sizes, which overstate V8's by about 2×)...
   */
  budgetPerByte: 48,
  /** ...plus this fixed allowance (64 MiB). */
  budgetFixed: 64 << 20,
} as const;

/**
 * Bytes a reader may allocate while parsing one part of a file (a pickle):
 * `LIMITS.budgetFixed + LIMITS.budgetPerByte × partBytes`, where `partBytes`
 * counts the part's bytes as stored in the file (before any inflating). The
 * reader charges what it builds (objects, elements, strings, copies, the
 * names it joins) before or as it builds it, at COST's sizes.
 */
export class AllocationBudget {
  readonly limit: number;
  #used = 0;

  constructor(
    /** The file, for the error. */
    readonly file: string,
    /** The part being parsed ("archive/data.pkl"). */
    readonly part: string,
    partBytes: number,
  ) {
    this.limit = LIMITS.budgetFixed + LIMITS.budgetPerByte * partBytes;
  }

  /** Bytes charged so far. */
  get used(): number {
    return this.#used;
  }

  /**
   * Charges `bytes` for `what` (the field or byte position; a function is
   * only called for the error); LimitError past the limit.
   */
  charge(bytes: number, what: string | (() => string)): void {
    this.#used += bytes;
    if (this.#used > this.limit) {
      throw new LimitError("would build more than a small multiple of the file's own size", {
        file: this.file,
        key: `${this.part}: ${typeof what === "string" ? what : what()}`,
        expected: `at most ${this.limit} bytes (${LIMITS.budgetFixed} + ` +
          `${LIMITS.budgetPerByte} × ${(this.limit - LIMITS.budgetFixed) / LIMITS.budgetPerByte})`,
        found: `${this.#used} bytes`,
        fix:
          "the file repeats one value far more than a checkpoint does (a hostile or damaged file)",
      });
    }
  }
}

/** What the readers charge for what they build (V8's sizes, rounded up). */
export const COST = {
  /** An object, array, map or tuple, empty. */
  object: 64,
  /** One element of an array or entry of a map. */
  element: 16,
  /** One UTF-16 character of a string. */
  char: 2,
} as const;

/** What to do about a cap: nothing bloom reads comes near one. */
const LIMIT_FIX = "no checkpoint or array file comes near this (data/README.md, Caps): the file " +
  "is damaged or crafted; check that it is the file you meant, or re-export it";

/** LimitError for `found` past the cap `limit` of `field` in `file`. */
export function limitError(
  file: string,
  key: string,
  what: string,
  limit: number,
  found: number | string,
): LimitError {
  return new LimitError(`${what} exceeds bloom's limit`, {
    file,
    key,
    expected: `at most ${limit}`,
    found: String(found),
    fix: LIMIT_FIX,
  });
}
