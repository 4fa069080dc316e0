/**
 * Class labels as scikit-learn sees them: `np.unique` order (numbers
 * numerically, strings by Unicode code point) and integer codes into that
 * order. Every estimator and metric here encodes labels through this module,
 * so "class index" means the same thing everywhere (tie-breaks pick the
 * smallest class index, as scikit-learn does).
 */

/** A class label: a class name or a numeric code. */
export type Label = string | number;

/** Compares two strings by Unicode code point (numpy's order for `str` arrays). */
export function compareCodePoints(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const ca = a.codePointAt(i)!;
    const cb = b.codePointAt(i)!;
    if (ca !== cb) return ca < cb ? -1 : 1;
    if (ca > 0xffff) i++; // a surrogate pair is one code point
  }
  return a.length - b.length;
}

/** numpy's order for labels of one kind. */
export function compareLabels(a: Label, b: Label): number {
  if (typeof a === "number" && typeof b === "number") return a < b ? -1 : a > b ? 1 : 0;
  return compareCodePoints(String(a), String(b));
}

/**
 * Checks that `labels` are all strings or all finite numbers (numpy would
 * coerce a mix to strings and silently change the class order), and returns
 * which kind they are.
 */
export function labelKind(labels: readonly Label[], what = "labels"): "string" | "number" {
  if (labels.length === 0) throw new RangeError(`${what}: empty; need at least one label`);
  const kind: "string" | "number" = typeof labels[0] === "number" ? "number" : "string";
  for (let i = 0; i < labels.length; i++) {
    const l = labels[i];
    if (typeof l !== "string" && typeof l !== "number") {
      throw new TypeError(`${what}[${i}] is ${String(l)}; labels must be strings or numbers`);
    }
    if ((typeof l === "number") !== (kind === "number")) {
      throw new TypeError(
        `${what}: mix of string and number labels (${JSON.stringify(labels[0])} and ` +
          `${JSON.stringify(l)} at ${i}); convert them all to one kind`,
      );
    }
    if (typeof l === "number" && !Number.isFinite(l)) {
      throw new RangeError(`${what}[${i}] is ${l}; numeric labels must be finite`);
    }
  }
  return kind;
}

/** Sorted distinct labels (`np.unique`). */
export function uniqueSorted(labels: readonly Label[], what = "labels"): Label[] {
  labelKind(labels, what);
  const seen = new Set<Label>(labels);
  return [...seen].sort(compareLabels);
}

/** Labels encoded as indices into `classes`. */
export interface Encoded {
  classes: Label[];
  codes: Int32Array;
}

/**
 * Encodes `labels` as indices into `classes` (default: their sorted unique
 * values, `np.unique(..., return_inverse=True)`). With explicit `classes`, a
 * label outside them is an error naming it.
 */
export function encodeLabels(
  labels: readonly Label[],
  classes?: readonly Label[],
  what = "labels",
): Encoded {
  const cls = classes ? [...classes] : uniqueSorted(labels, what);
  const index = new Map<Label, number>();
  cls.forEach((c, i) => index.set(c, i));
  const codes = new Int32Array(labels.length);
  for (let i = 0; i < labels.length; i++) {
    const k = index.get(labels[i]);
    if (k === undefined) {
      throw new RangeError(
        `${what}[${i}] = ${JSON.stringify(labels[i])} is not one of the classes ` +
          `${JSON.stringify(cls)}`,
      );
    }
    codes[i] = k;
  }
  return { classes: cls, codes };
}

/** Per-class counts of encoded labels (`np.bincount` with `minlength`). */
export function bincount(codes: ArrayLike<number>, nClasses: number): number[] {
  const counts = new Array<number>(nClasses).fill(0);
  for (let i = 0; i < codes.length; i++) counts[codes[i]]++;
  return counts;
}
