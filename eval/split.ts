/**
 * Train/test splits and stratified k-fold, index-identical to scikit-learn
 * 1.2 (`train_test_split(..., stratify=y)`, `ShuffleSplit`,
 * `StratifiedKFold`), plus patient-level (grouped) versions of both.
 *
 * Exactness rests on two things: numpy's legacy `RandomState` stream
 * (`eval/numpy_random.ts`) and calling it in scikit-learn's order, which is
 * why the code below follows scikit-learn's control flow step for step
 * (two `_approximate_mode` calls, one permutation per class in class order,
 * then a permutation of train and of test).
 *
 * Grouped splits (patients): every sample of a group must carry the same
 * label. The groups are sorted (`np.unique` order), each gets its label, and
 * the scikit-learn split above runs on that group-level list with the same
 * seed; each chosen group then contributes all its samples, in ascending
 * sample order. So no group is in two splits, the class balance is kept at
 * the group level, and a grouped split equals scikit-learn's split of the
 * patient list, expanded.
 */
import { NumpyRandomState } from "./numpy_random.ts";
import { bincount, encodeLabels, type Label, labelKind, uniqueSorted } from "./labels.ts";

/** Sample indices of one split. */
export interface Split {
  train: number[];
  test: number[];
}

/** Options of `trainTestSplit`. */
export interface TrainTestSplitOptions {
  /**
   * Fraction of samples (or groups) for training, in (0, 1), or an absolute
   * count when an integer ≥ 1 (scikit-learn's int `train_size`).
   */
  trainSize: number;
  /** `random_state`, an integer in [0, 2**32 − 1]. */
  seed: number;
  /** One group id (patient) per sample: split whole groups. */
  groups?: readonly string[];
  /**
   * Stratify by label (default true). false reproduces
   * `train_test_split(range(n), train_size=…, random_state=seed)` (`ShuffleSplit`).
   */
  stratify?: boolean;
}

/**
 * `sklearn.model_selection.train_test_split(range(n), train_size=trainSize,
 * stratify=labels, random_state=seed)`: the same indices in the same order.
 * With `groups`, whole groups are split (see the module comment).
 */
export function trainTestSplit(labels: readonly Label[], opts: TrainTestSplitOptions): Split {
  checkSeed(opts.seed, "trainTestSplit");
  if (opts.groups) {
    const g = groupLevel(labels, opts.groups, "trainTestSplit");
    const split = trainTestSplit(g.labels, { ...opts, groups: undefined });
    return { train: g.expand(split.train, false), test: g.expand(split.test, false) };
  }
  labelKind(labels, "trainTestSplit: labels");
  const n = labels.length;
  const { nTrain, nTest } = splitSizes(n, opts.trainSize);
  const rng = new NumpyRandomState(opts.seed);
  if (opts.stratify === false) {
    // ShuffleSplit: test first, then train, from one permutation.
    const perm = rng.permutation(n);
    return { train: perm.slice(nTest, nTest + nTrain), test: perm.slice(0, nTest) };
  }
  return stratifiedShuffleSplit(labels, nTrain, nTest, rng);
}

/** scikit-learn's `_validate_shuffle_split` for a given `train_size` and no `test_size`. */
function splitSizes(n: number, trainSize: number): { nTrain: number; nTest: number } {
  let nTrain: number;
  if (Number.isInteger(trainSize) && trainSize >= 1) {
    if (trainSize >= n) {
      throw new RangeError(
        `trainSize=${trainSize} must be below the number of samples (${n}); ` +
          `pass a fraction in (0, 1) or a smaller count`,
      );
    }
    nTrain = trainSize;
  } else if (trainSize > 0 && trainSize < 1) {
    nTrain = Math.floor(trainSize * n);
  } else {
    throw new RangeError(
      `trainSize=${trainSize} must be a fraction in (0, 1) or an integer count ≥ 1`,
    );
  }
  const nTest = n - nTrain;
  if (nTrain === 0) {
    throw new RangeError(
      `with ${n} samples and trainSize=${trainSize} the train set would be empty; raise trainSize`,
    );
  }
  return { nTrain, nTest };
}

/** `StratifiedShuffleSplit(n_splits=1)._iter_indices`, first split. */
function stratifiedShuffleSplit(
  labels: readonly Label[],
  nTrain: number,
  nTest: number,
  rng: NumpyRandomState,
): Split {
  const { classes, codes } = encodeLabels(labels);
  const nClasses = classes.length;
  const counts = bincount(codes, nClasses);
  const least = Math.min(...counts);
  if (least < 2) {
    const c = classes[counts.indexOf(least)];
    throw new RangeError(
      `stratified split: class ${JSON.stringify(c)} has only ${least} member; every class ` +
        `needs at least 2 (drop or merge it)`,
    );
  }
  if (nTrain < nClasses) {
    throw new RangeError(
      `stratified split: train size ${nTrain} is below the number of classes ${nClasses}`,
    );
  }
  if (nTest < nClasses) {
    throw new RangeError(
      `stratified split: test size ${nTest} is below the number of classes ${nClasses}; ` +
        `lower trainSize`,
    );
  }
  // Indices of each class in ascending order (stable argsort of the codes).
  const classIndices: number[][] = Array.from({ length: nClasses }, () => []);
  for (let i = 0; i < codes.length; i++) classIndices[codes[i]].push(i);

  const nI = approximateMode(counts, nTrain, rng);
  const remaining = counts.map((c, i) => c - nI[i]);
  const tI = approximateMode(remaining, nTest, rng);
  const train: number[] = [];
  const test: number[] = [];
  for (let k = 0; k < nClasses; k++) {
    const perm = rng.permutation(counts[k]);
    const idx = perm.map((p) => classIndices[k][p]);
    train.push(...idx.slice(0, nI[k]));
    test.push(...idx.slice(nI[k], nI[k] + tI[k]));
  }
  return { train: rng.permuted(train), test: rng.permuted(test) };
}

/**
 * scikit-learn's `_approximate_mode`: floor of the proportional allocation,
 * then the leftover draws go to the largest remainders, ties among equal
 * remainders broken by `rng.choice(..., replace=False)`. Float maths in the
 * same order as numpy so remainders compare equal exactly when numpy's do.
 */
export function approximateMode(
  classCounts: readonly number[],
  nDraws: number,
  rng: NumpyRandomState,
): number[] {
  let total = 0;
  for (const c of classCounts) total += c;
  const continuous = classCounts.map((c) => (c / total) * nDraws);
  const floored = continuous.map(Math.floor);
  let needToAdd = nDraws - floored.reduce((a, b) => a + b, 0);
  if (needToAdd > 0) {
    const remainder = continuous.map((c, i) => c - floored[i]);
    const values = [...new Set(remainder)].sort((a, b) => b - a);
    for (const value of values) {
      const inds: number[] = [];
      remainder.forEach((r, i) => {
        if (r === value) inds.push(i);
      });
      const addNow = Math.min(inds.length, needToAdd);
      for (const i of rng.choiceWithoutReplacement(inds, addNow)) floored[i] += 1;
      needToAdd -= addNow;
      if (needToAdd === 0) break;
    }
  }
  return floored;
}

/** Options of `stratifiedKFold`. */
export interface KFoldOptions {
  /** Number of folds, ≥ 2. */
  folds: number;
  /** Shuffle each class's fold assignment (scikit-learn `shuffle=True`). */
  shuffle: boolean;
  /** `random_state`; required with `shuffle`, refused without it (as scikit-learn does). */
  seed?: number;
  /** One group id (patient) per sample: folds of whole groups. */
  groups?: readonly string[];
}

/**
 * `StratifiedKFold(n_splits=folds, shuffle, random_state=seed).split(X, y)`:
 * one `{train, test}` per fold, each ascending, as scikit-learn yields them.
 * Classes with fewer members than folds are allowed (scikit-learn only
 * warns): some test folds then lack that class. With `groups`, folds of whole
 * groups, stratified by group label (module comment); indices ascending.
 */
export function stratifiedKFold(labels: readonly Label[], opts: KFoldOptions): Split[] {
  const { folds, shuffle, seed } = opts;
  if (!Number.isInteger(folds) || folds < 2) {
    throw new RangeError(`stratifiedKFold: folds=${folds} must be an integer ≥ 2`);
  }
  if (shuffle && seed === undefined) {
    throw new RangeError("stratifiedKFold: shuffle=true needs a seed (e.g. seed: 42)");
  }
  if (!shuffle && seed !== undefined) {
    throw new RangeError(
      "stratifiedKFold: a seed has no effect with shuffle=false; drop it or set shuffle=true",
    );
  }
  if (seed !== undefined) checkSeed(seed, "stratifiedKFold");
  if (opts.groups) {
    const g = groupLevel(labels, opts.groups, "stratifiedKFold");
    return stratifiedKFold(g.labels, { ...opts, groups: undefined }).map((s) => ({
      train: g.expand(s.train, true),
      test: g.expand(s.test, true),
    }));
  }
  const kind = labelKind(labels, "stratifiedKFold: labels");
  if (kind === "number" && labels.some((l) => !Number.isInteger(l))) {
    throw new RangeError(
      "stratifiedKFold: numeric labels must be integers (scikit-learn calls non-integer targets " +
        "continuous and refuses them)",
    );
  }
  const n = labels.length;
  if (folds > n) {
    throw new RangeError(`stratifiedKFold: folds=${folds} exceeds the number of samples ${n}`);
  }
  // Classes encoded by order of first appearance (scikit-learn does this so
  // that the shuffles below run in that order).
  const appearance = new Map<Label, number>();
  const y = new Int32Array(n);
  for (let i = 0; i < n; i++) {
    let k = appearance.get(labels[i]);
    if (k === undefined) appearance.set(labels[i], k = appearance.size);
    y[i] = k;
  }
  const nClasses = appearance.size;
  const counts = bincount(y, nClasses);
  if (counts.every((c) => folds > c)) {
    throw new RangeError(
      `stratifiedKFold: folds=${folds} is greater than the number of members in every class ` +
        `(${counts.join(", ")}); use fewer folds`,
    );
  }
  // Round-robin over the sorted codes: allocation[f][k] = members of class k in fold f.
  const sorted = Int32Array.from(y).sort();
  const allocation = Array.from({ length: folds }, () => new Array<number>(nClasses).fill(0));
  for (let i = 0; i < n; i++) allocation[i % folds][sorted[i]]++;

  const rng = shuffle ? new NumpyRandomState(seed!) : null;
  const testFold = new Int32Array(n);
  for (let k = 0; k < nClasses; k++) {
    const foldsForClass: number[] = [];
    for (let f = 0; f < folds; f++) {
      for (let r = 0; r < allocation[f][k]; r++) foldsForClass.push(f);
    }
    rng?.shuffle(foldsForClass);
    let j = 0;
    for (let i = 0; i < n; i++) if (y[i] === k) testFold[i] = foldsForClass[j++];
  }
  const out: Split[] = [];
  for (let f = 0; f < folds; f++) {
    const train: number[] = [];
    const test: number[] = [];
    for (let i = 0; i < n; i++) (testFold[i] === f ? test : train).push(i);
    out.push({ train, test });
  }
  return out;
}

/** The group-level view of grouped samples. */
interface GroupLevel {
  /** Label of each group, groups in sorted order. */
  labels: Label[];
  /** Sample indices of the given groups; `sort` sorts them ascending overall. */
  expand(groupIdx: number[], sort: boolean): number[];
}

function groupLevel(labels: readonly Label[], groups: readonly string[], op: string): GroupLevel {
  labelKind(labels, `${op}: labels`);
  if (groups.length !== labels.length) {
    throw new RangeError(
      `${op}: groups has ${groups.length} entries but labels has ${labels.length}; ` +
        `give one group id per sample`,
    );
  }
  const ids = uniqueSorted(groups, `${op}: groups`) as string[];
  const index = new Map(ids.map((g, i) => [g, i]));
  const groupLabel: Label[] = new Array(ids.length);
  const members: number[][] = ids.map(() => []);
  for (let i = 0; i < groups.length; i++) {
    const g = index.get(groups[i])!;
    if (members[g].length === 0) groupLabel[g] = labels[i];
    else if (groupLabel[g] !== labels[i]) {
      throw new RangeError(
        `${op}: group ${JSON.stringify(groups[i])} has two labels ` +
          `(${JSON.stringify(groupLabel[g])} and ${JSON.stringify(labels[i])}, sample ${i}); ` +
          `a grouped split needs one label per group`,
      );
    }
    members[g].push(i);
  }
  return {
    labels: groupLabel,
    expand(groupIdx, sort) {
      const out = groupIdx.flatMap((g) => members[g]);
      return sort ? out.sort((a, b) => a - b) : out;
    },
  };
}

function checkSeed(seed: number, op: string): void {
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
    throw new RangeError(`${op}: seed=${seed} must be an integer in [0, 2**32 - 1], e.g. 42`);
  }
}
