/**
 * numpy's legacy `np.random.RandomState` (numpy 1.x), reproduced draw for
 * draw: MT19937 seeded from a 32-bit integer, the masked-rejection bounded
 * integers that `randint`, `shuffle` and `permutation` use, and
 * `choice(replace=False)`. scikit-learn's `check_random_state(seed)` returns
 * exactly this generator, so the splits in `eval/split.ts` can match
 * scikit-learn index for index.
 *
 * Only what the splitters need is here; every method consumes the stream the
 * way numpy does, so calling them in numpy's order reproduces numpy's output.
 */

const N = 624;
const M = 397;
const MATRIX_A = 0x9908b0df;
const UPPER_MASK = 0x80000000;
const LOWER_MASK = 0x7fffffff;

/** A legacy numpy `RandomState(seed)`. */
export class NumpyRandomState {
  #mt = new Uint32Array(N);
  #pos = N;

  /** `seed` must be an integer in [0, 2**32 − 1], as numpy requires. */
  constructor(seed: number) {
    if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
      throw new RangeError(
        `NumpyRandomState: seed ${seed} is not an integer in [0, 2**32 - 1]; pass e.g. 42`,
      );
    }
    // init_genrand: mt[i] = 1812433253 * (mt[i-1] ^ (mt[i-1] >> 30)) + i (mod 2^32).
    const mt = this.#mt;
    mt[0] = seed >>> 0;
    for (let i = 1; i < N; i++) {
      const prev = mt[i - 1];
      mt[i] = (Math.imul(1812433253, prev ^ (prev >>> 30)) + i) >>> 0;
    }
    this.#pos = N;
  }

  /** Regenerates the 624-word state block (the MT19937 twist). */
  #twist(): void {
    const mt = this.#mt;
    let kk = 0;
    for (; kk < N - M; kk++) {
      const y = (mt[kk] & UPPER_MASK) | (mt[kk + 1] & LOWER_MASK);
      mt[kk] = mt[kk + M] ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
    }
    for (; kk < N - 1; kk++) {
      const y = (mt[kk] & UPPER_MASK) | (mt[kk + 1] & LOWER_MASK);
      mt[kk] = mt[kk + (M - N)] ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
    }
    const y = (mt[N - 1] & UPPER_MASK) | (mt[0] & LOWER_MASK);
    mt[N - 1] = mt[M - 1] ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
    this.#pos = 0;
  }

  /** The next raw 32-bit output (numpy's `next_uint32`), tempered. */
  nextUint32(): number {
    if (this.#pos >= N) this.#twist();
    let y = this.#mt[this.#pos++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  /** A double in [0, 1) with 53 random bits (`random_sample`, two draws). */
  random(): number {
    const a = this.nextUint32() >>> 5;
    const b = this.nextUint32() >>> 6;
    return (a * 67108864 + b) / 9007199254740992;
  }

  /**
   * A uniform integer in [0, max] (inclusive), by numpy's masked rejection:
   * draw 32 bits, keep the bits of the smallest all-ones mask ≥ max, retry
   * while above max. `max` 0 consumes no draw.
   */
  interval(max: number): number {
    if (!Number.isInteger(max) || max < 0 || max > 0xffffffff) {
      throw new RangeError(`NumpyRandomState.interval: max ${max} is not in [0, 2**32 - 1]`);
    }
    if (max === 0) return 0;
    let mask = max;
    mask |= mask >>> 1;
    mask |= mask >>> 2;
    mask |= mask >>> 4;
    mask |= mask >>> 8;
    mask |= mask >>> 16;
    mask >>>= 0;
    let v: number;
    do v = (this.nextUint32() & mask) >>> 0; while (v > max);
    return v;
  }

  /**
   * `randint(low, high)`: an integer in [low, high) (the default int64 path
   * with ranges below 2**32, which numpy serves with the masked 32-bit draw).
   */
  randint(low: number, high: number): number {
    if (!Number.isInteger(low) || !Number.isInteger(high) || high <= low) {
      throw new RangeError(
        `NumpyRandomState.randint: need integers low < high, got ${low}, ${high}`,
      );
    }
    const range = high - low - 1;
    if (range > 0xffffffff) {
      throw new RangeError(
        `NumpyRandomState.randint: range ${range + 1} exceeds 2**32 (64-bit path not implemented)`,
      );
    }
    return low + this.interval(range);
  }

  /**
   * In-place Fisher–Yates shuffle exactly as legacy `shuffle` on a 1-d array:
   * for i from n−1 down to 1, swap a[i] with a[interval(i)].
   */
  shuffle<T>(a: T[] | Int32Array | Float64Array): void {
    for (let i = a.length - 1; i >= 1; i--) {
      const j = this.interval(i);
      const t = a[i];
      a[i] = a[j];
      a[j] = t;
    }
  }

  /** `permutation(n)`: a shuffled `arange(n)`. */
  permutation(n: number): number[] {
    if (!Number.isInteger(n) || n < 0) {
      throw new RangeError(`NumpyRandomState.permutation: n ${n} is not a non-negative integer`);
    }
    const a = Array.from({ length: n }, (_, i) => i);
    this.shuffle(a);
    return a;
  }

  /** `permutation(list)`: a shuffled copy of `items`. */
  permuted<T>(items: readonly T[]): T[] {
    const a = items.slice();
    this.shuffle(a);
    return a;
  }

  /**
   * `choice(items, size, replace=False)` without probabilities: legacy numpy
   * takes the first `size` entries of `permutation(len(items))`, so the whole
   * population is shuffled even when `size` is small.
   */
  choiceWithoutReplacement<T>(items: readonly T[], size: number): T[] {
    if (!Number.isInteger(size) || size < 0 || size > items.length) {
      throw new RangeError(
        `NumpyRandomState.choiceWithoutReplacement: size ${size} not in [0, ${items.length}]`,
      );
    }
    return this.permutation(items.length).slice(0, size).map((i) => items[i]);
  }
}
