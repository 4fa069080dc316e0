/**
 * The row-major feature matrix every estimator here takes: embeddings
 * [rows, cols] as one flat typed array (the shape `embed` writes), checked
 * once at the boundary so the numeric kernels can assume a valid shape and
 * finite values.
 */

/** A row-major [rows, cols] matrix. */
export interface Matrix {
  data: Float32Array | Float64Array;
  rows: number;
  cols: number;
}

/**
 * Wraps `data` as a [rows, cols] matrix, checking the length and that every
 * value is finite (a NaN embedding would silently poison distances and
 * gradients). `what` names the input in errors.
 */
export function matrix(
  data: Float32Array | Float64Array,
  rows: number,
  cols: number,
  what = "features",
): Matrix {
  if (!Number.isInteger(rows) || rows < 0 || !Number.isInteger(cols) || cols < 1) {
    throw new RangeError(`${what}: shape [${rows}, ${cols}] is not a valid [rows, cols]`);
  }
  if (data.length !== rows * cols) {
    throw new RangeError(
      `${what}: ${data.length} values do not fill shape [${rows}, ${cols}] ` +
        `(${rows * cols} expected)`,
    );
  }
  for (let i = 0; i < data.length; i++) {
    if (!Number.isFinite(data[i])) {
      throw new RangeError(
        `${what}: value at row ${Math.floor(i / cols)}, column ${i % cols} is ${data[i]}; ` +
          `features must be finite`,
      );
    }
  }
  return { data, rows, cols };
}

/** The matrix as float64 (a copy only when it is not already float64). */
export function toFloat64(m: Matrix): Float64Array {
  return m.data instanceof Float64Array ? m.data : Float64Array.from(m.data);
}

/** Rows `idx` of `m`, in that order, as a new matrix of the same element type. */
export function takeRows(m: Matrix, idx: readonly number[]): Matrix {
  const d = m.cols;
  const out = m.data instanceof Float64Array
    ? new Float64Array(idx.length * d)
    : new Float32Array(idx.length * d);
  idx.forEach((r, i) => out.set(m.data.subarray(r * d, (r + 1) * d), i * d));
  return { data: out, rows: idx.length, cols: d };
}

/** Throws unless `a` and `b` have the same number of columns. */
export function sameCols(a: Matrix, b: Matrix, op: string): void {
  if (a.cols !== b.cols) {
    throw new RangeError(
      `${op}: feature dimension ${b.cols} differs from the ${a.cols} the model was fitted on`,
    );
  }
}
