/**
 * Limited-memory BFGS in float64 for smooth unconstrained minimisation, with
 * a line search that enforces the strong Wolfe conditions (Nocedal & Wright,
 * Algorithms 3.5 and 3.6: bracketing, then zoom by safeguarded cubic
 * interpolation), falling back to Hager–Zhang's approximate Wolfe test where
 * f's rounding noise swamps the decrease (`wolfeLineSearch`).
 *
 * Stopping follows scipy's L-BFGS-B, which scikit-learn's "lbfgs" solver
 * runs: stop when max |g_i| ≤ gtol (scipy's projected-gradient test, with no
 * bounds) or when the relative decrease (f_k − f_{k+1}) / max(|f_k|,
 * |f_{k+1}|, 1) ≤ ftol (scipy's `factr·eps`, default 2.2e-9), or after
 * maxIter iterations. Defaults are scikit-learn's: memory 10, gtol 1e-4,
 * maxIter 1000 (`ftol: 0` turns the decrease test off, leaving the gradient
 * test alone). scipy uses the compact L-BFGS-B form and Moré–Thuente's
 * line search, so iterates can differ slightly; on the test fixtures the
 * iteration counts and solutions agree with scikit-learn's (|Δp| ~ 2e-7).
 *
 * The algorithm is written once, as a generator that yields each point to
 * evaluate (`lbfgsIterations`); `lbfgs` drives it with a synchronous
 * objective and `lbfgsAsync` with one that awaits (e.g. worker threads).
 */

/** f(x), writing ∇f(x) into `grad`. */
export type Objective = (x: Float64Array, grad: Float64Array) => number;

/** An objective computed asynchronously (same contract as `Objective`). */
export type AsyncObjective = (x: Float64Array, grad: Float64Array) => Promise<number>;

/** A point the solver wants evaluated: the driver returns f(x) and fills `grad`. */
export interface EvalRequest {
  x: Float64Array;
  grad: Float64Array;
}

/** Options of `lbfgs`. */
export interface LbfgsOptions {
  /** Iteration limit (accepted steps), scikit-learn's `max_iter`. Default 1000. */
  maxIter?: number;
  /** Stop when max |∇f| ≤ gtol. Default 1e-4 (scikit-learn's `tol`). */
  gtol?: number;
  /** Stop when the relative decrease of f is ≤ ftol. Default 2.220446049250313e-9 (scipy). */
  ftol?: number;
  /** Number of correction pairs kept. Default 10 (scipy's maxcor). */
  memory?: number;
  /** Function evaluations allowed per line search. Default 20 (scipy's maxls). */
  maxLineSearch?: number;
  /** Sufficient-decrease constant of the Wolfe conditions. Default 1e-4. */
  c1?: number;
  /** Curvature constant of the (strong) Wolfe conditions. Default 0.9. */
  c2?: number;
  /** Called after every accepted step. */
  onIteration?: (info: { iteration: number; f: number; gradMax: number; step: number }) => void;
}

/** Why the iteration stopped. */
export type StopReason = "gtol" | "ftol" | "maxIter" | "lineSearch";

/** Result of `lbfgs`. */
export interface LbfgsResult {
  x: Float64Array;
  f: number;
  grad: Float64Array;
  /** Accepted steps (scipy's `nit`). */
  iterations: number;
  /** Objective evaluations. */
  evaluations: number;
  /** True when a tolerance test stopped it (false on maxIter or a failed line search). */
  converged: boolean;
  reason: StopReason;
}

function dot(a: Float64Array, b: Float64Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

function maxAbs(a: Float64Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const v = Math.abs(a[i]);
    if (v > m || v !== v) m = v; // NaN propagates so it can never pass a tolerance test
  }
  return m;
}

/** Minimises `fg` from `x0` (not modified). */
export function lbfgs(fg: Objective, x0: Float64Array, opts: LbfgsOptions = {}): LbfgsResult {
  const it = lbfgsIterations(x0, opts);
  let r = it.next(NaN);
  while (!r.done) r = it.next(fg(r.value.x, r.value.grad));
  return r.value;
}

/** `lbfgs` with an asynchronous objective (evaluations run one at a time). */
export async function lbfgsAsync(
  fg: AsyncObjective,
  x0: Float64Array,
  opts: LbfgsOptions = {},
): Promise<LbfgsResult> {
  const it = lbfgsIterations(x0, opts);
  let r = it.next(NaN);
  while (!r.done) r = it.next(await fg(r.value.x, r.value.grad));
  return r.value;
}

/**
 * The solver as a generator: yields each point to evaluate and expects f at
 * that point back (with the gradient written into the request's `grad`).
 */
export function* lbfgsIterations(
  x0: Float64Array,
  opts: LbfgsOptions = {},
): Generator<EvalRequest, LbfgsResult, number> {
  const maxIter = opts.maxIter ?? 1000;
  const gtol = opts.gtol ?? 1e-4;
  const ftol = opts.ftol ?? 2.220446049250313e-9;
  const mem = opts.memory ?? 10;
  const maxLs = opts.maxLineSearch ?? 20;
  const c1 = opts.c1 ?? 1e-4;
  const c2 = opts.c2 ?? 0.9;
  if (!Number.isInteger(maxIter) || maxIter < 0) {
    throw new RangeError(`lbfgs: maxIter=${maxIter} must be a non-negative integer`);
  }
  if (!(gtol >= 0) || !(ftol >= 0)) throw new RangeError("lbfgs: gtol and ftol must be ≥ 0");
  if (!Number.isInteger(mem) || mem < 1) throw new RangeError(`lbfgs: memory=${mem} must be ≥ 1`);
  if (!(0 < c1 && c1 < c2 && c2 < 1)) {
    throw new RangeError(`lbfgs: need 0 < c1 < c2 < 1, got c1=${c1}, c2=${c2}`);
  }

  const n = x0.length;
  let x = Float64Array.from(x0);
  let g = new Float64Array(n);
  let f: number = yield { x, grad: g };
  let evaluations = 1;
  if (!Number.isFinite(f)) throw new RangeError(`lbfgs: objective is ${f} at the start point`);

  const S: Float64Array[] = [];
  const Y: Float64Array[] = [];
  const rho: number[] = [];
  const alpha = new Float64Array(mem);
  const d = new Float64Array(n);
  let xNew = new Float64Array(n);
  let gNew = new Float64Array(n);

  const done = (iterations: number, reason: StopReason): LbfgsResult => ({
    x,
    f,
    grad: g,
    iterations,
    evaluations,
    converged: reason === "gtol" || reason === "ftol",
    reason,
  });

  if (maxAbs(g) <= gtol) return done(0, "gtol");

  for (let iter = 1; iter <= maxIter; iter++) {
    // Two-loop recursion: d = −H g, with H0 = (sᵀy / yᵀy) I from the newest pair.
    for (let i = 0; i < n; i++) d[i] = -g[i];
    for (let j = S.length - 1; j >= 0; j--) {
      alpha[j] = rho[j] * dot(S[j], d);
      const y = Y[j];
      for (let i = 0; i < n; i++) d[i] -= alpha[j] * y[i];
    }
    if (S.length > 0) {
      const last = S.length - 1;
      const gamma = dot(S[last], Y[last]) / dot(Y[last], Y[last]);
      for (let i = 0; i < n; i++) d[i] *= gamma;
    }
    for (let j = 0; j < S.length; j++) {
      const beta = rho[j] * dot(Y[j], d);
      const s = S[j];
      for (let i = 0; i < n; i++) d[i] += (alpha[j] - beta) * s[i];
    }
    let dg = dot(d, g);
    if (!(dg < 0)) {
      // Not a descent direction (curvature information gone bad): restart.
      S.length = Y.length = rho.length = 0;
      for (let i = 0; i < n; i++) d[i] = -g[i];
      dg = dot(d, g);
    }
    // Without curvature pairs the step scale is unknown: a unit-length first trial, as
    // scipy does (1/‖d‖); with pairs, the quasi-Newton step 1.
    const step0 = S.length === 0 ? 1 / Math.sqrt(dot(d, d)) : 1;

    // Strong Wolfe line search on φ(t) = f(x + t d); leaves the accepted point in xNew/gNew.
    let lastT = NaN;
    const search = wolfeSearch(f, dg, step0, c1, c2, maxLs);
    let step = search.next([NaN, NaN]);
    while (!step.done) {
      const t = step.value;
      for (let i = 0; i < n; i++) xNew[i] = x[i] + t * d[i];
      const ft: number = yield { x: xNew, grad: gNew };
      evaluations++;
      lastT = t;
      step = search.next([ft, dot(gNew, d)]);
    }
    const accepted = step.value[0];
    let fAcc = step.value[1];
    if (accepted > 0 && accepted !== lastT) {
      // The search settled on an earlier trial: evaluate it again to have its gradient.
      for (let i = 0; i < n; i++) xNew[i] = x[i] + accepted * d[i];
      fAcc = yield { x: xNew, grad: gNew };
      evaluations++;
    }
    if (accepted <= 0) {
      if (S.length > 0) {
        // Retry from steepest descent before giving up, as scipy does.
        S.length = Y.length = rho.length = 0;
        iter--;
        continue;
      }
      return done(iter - 1, "lineSearch");
    }

    // Correction pair from the accepted step; skipped when curvature is not positive.
    const s = new Float64Array(n);
    const y = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      s[i] = xNew[i] - x[i];
      y[i] = gNew[i] - g[i];
    }
    const sy = dot(s, y);
    if (sy > 2.220446049250313e-16 * dot(y, y)) {
      if (S.length === mem) S.shift(), Y.shift(), rho.shift();
      S.push(s), Y.push(y), rho.push(1 / sy);
    }
    [x, xNew] = [xNew, x];
    [g, gNew] = [gNew, g];
    const fOld = f;
    f = fAcc;
    const gm = maxAbs(g);
    opts.onIteration?.({ iteration: iter, f, gradMax: gm, step: accepted });
    if (gm <= gtol) return done(iter, "gtol");
    if (ftol > 0 && (fOld - f) / Math.max(Math.abs(fOld), Math.abs(f), 1) <= ftol) {
      return done(iter, "ftol");
    }
  }
  return done(maxIter, "maxIter");
}

/**
 * Finds a step t satisfying the strong Wolfe conditions
 * φ(t) ≤ φ(0) + c1·t·φ'(0) and |φ'(t)| ≤ c2·|φ'(0)|, starting from t0:
 * bracketing (N&W Alg. 3.5), then zoom (Alg. 3.6) with safeguarded cubic
 * interpolation. Returns [t, φ(t)], or [−1, NaN] when `maxEvals` ran out
 * without an acceptable step.
 *
 * Near a minimum the decrease c1·t·|φ'(0)| drops below the rounding noise of
 * φ (a sum over thousands of samples), where comparing φ values is
 * meaningless. There, as Hager and Zhang's "approximate Wolfe" conditions
 * do, sufficient decrease is read from the slope instead:
 * φ'(t) ≤ (1 − 2c1)|φ'(0)| with φ(t) ≤ φ(0) + ε, ε = 1e-12·|φ(0)|, and the
 * bracket is kept by the sign of φ'. Without this, tight tolerances stall
 * on rounding.
 */
export function wolfeLineSearch(
  phi: (t: number) => [number, number],
  f0: number,
  d0: number,
  t0: number,
  c1: number,
  c2: number,
  maxEvals: number,
): [number, number] {
  const search = wolfeSearch(f0, d0, t0, c1, c2, maxEvals);
  let r = search.next([NaN, NaN]);
  while (!r.done) r = search.next(phi(r.value));
  return r.value;
}

/** `wolfeLineSearch` as a generator: yields trial steps t, receives [φ(t), φ'(t)]. */
function* wolfeSearch(
  f0: number,
  d0: number,
  t0: number,
  c1: number,
  c2: number,
  maxEvals: number,
): Generator<number, [number, number], [number, number]> {
  const eps = 1e-12 * Math.abs(f0);
  let evals = 0;
  const decrease = (t: number, ft: number, dt: number) =>
    ft <= f0 + c1 * t * d0 || (ft <= f0 + eps && dt <= -(1 - 2 * c1) * d0);
  const curvature = (dt: number) => Math.abs(dt) <= -c2 * d0;
  // The minimiser lies in (lo, hi) (either order); lo is the end with a decrease and φ' < 0
  // pointing at hi.
  function* zoom(
    lo: number,
    fLo: number,
    dLo: number,
    hi: number,
    fHi: number,
    dHi: number,
  ): Generator<number, [number, number], [number, number]> {
    while (evals < maxEvals) {
      const left = Math.min(lo, hi), w = Math.abs(hi - lo);
      if (w <= 1e-16 * Math.max(1, Math.abs(lo))) break;
      let t = Number.isFinite(fHi) ? cubicMin(lo, fLo, dLo, hi, fHi, dHi) : NaN;
      if (!(t > left + 0.1 * w && t < left + 0.9 * w)) t = 0.5 * (lo + hi);
      const [ft, dt] = yield t;
      evals++;
      if (!Number.isFinite(ft)) {
        hi = t, fHi = ft, dHi = dt;
      } else if (decrease(t, ft, dt) && ft <= fLo + eps) {
        if (curvature(dt)) return [t, ft];
        if (dt * (hi - lo) >= 0) hi = lo, fHi = fLo, dHi = dLo;
        lo = t, fLo = ft, dLo = dt;
      } else {
        hi = t, fHi = ft, dHi = dt;
      }
    }
    return lo > 0 && fLo < f0 ? [lo, fLo] : [-1, NaN];
  }
  let tPrev = 0, fPrev = f0, dPrev = d0;
  let t = t0;
  while (evals < maxEvals) {
    const [ft, dt] = yield t;
    evals++;
    if (!Number.isFinite(ft) || !decrease(t, ft, dt) || (tPrev > 0 && ft > fPrev + eps)) {
      return yield* zoom(tPrev, fPrev, dPrev, t, ft, dt);
    }
    if (curvature(dt)) return [t, ft];
    if (dt >= 0) return yield* zoom(t, ft, dt, tPrev, fPrev, dPrev);
    // Still descending: extrapolate, by the cubic's minimiser when it lies in [1.1t, 4t].
    const next = cubicMin(tPrev, fPrev, dPrev, t, ft, dt);
    tPrev = t, fPrev = ft, dPrev = dt;
    t = next > 1.1 * t && next < 4 * t ? next : 2 * t;
  }
  return tPrev > 0 && fPrev < f0 ? [tPrev, fPrev] : [-1, NaN];
}

/**
 * Minimiser of the cubic matching φ and φ' at a and b (N&W eq. 3.59); NaN
 * when the cubic has no minimiser (the caller then bisects or extrapolates).
 */
export function cubicMin(a: number, fa: number, da: number, b: number, fb: number, db: number) {
  const d1 = da + db - 3 * (fa - fb) / (a - b);
  const disc = d1 * d1 - da * db;
  if (!(disc >= 0)) return NaN;
  const d2 = Math.sign(b - a) * Math.sqrt(disc);
  return b - (b - a) * (db + d2 - d1) / (db - da + 2 * d2);
}
