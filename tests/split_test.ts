/**
 * Splits against scikit-learn 1.2 / numpy 1.24 (fixtures from
 * scripts/fixtures/eval.py): the legacy RandomState stream, train_test_split
 * (stratified and not) for several label distributions, train sizes and
 * seeds including the BCCD class counts (207, 88, 33, 20, 3), StratifiedKFold
 * with and without shuffling, and the grouped (patient-level) variants.
 * Everything is compared exactly: indices and their order.
 */
import { assert, assertEquals, assertThrows } from "./assert.ts";
import { NumpyRandomState } from "../eval/numpy_random.ts";
import { stratifiedKFold, trainTestSplit } from "../eval/split.ts";
import { sharedData } from "./helpers.ts";
import { readFixture } from "./fixtures.ts";

const read = (name: string) => readFixture(`eval/${name}.json`);

const rngFixture = await read("rng");
const splitFixture = await read("split");
type Labels = (string | number)[];
const sets = splitFixture.sets as Record<string, Labels>;

Deno.test("NumpyRandomState reproduces numpy's legacy RandomState draws", () => {
  for (const c of rngFixture.cases) {
    const rs = new NumpyRandomState(c.seed);
    const what = `seed ${c.seed}`;
    assertEquals(Array.from({ length: 8 }, () => rs.nextUint32()), c.uint32, `${what} uint32`);
    assertEquals(Array.from({ length: 4 }, () => rs.random()), c.random, `${what} random`);
    assertEquals(Array.from({ length: 12 }, () => rs.randint(0, 10)), c.randint_0_10, what);
    assertEquals(Array.from({ length: 6 }, () => rs.randint(-5, 1000)), c.randint_m5_1000, what);
    assertEquals(rs.permutation(1), c.permutation_1, `${what} permutation(1)`);
    assertEquals(rs.permutation(13), c.permutation_13, `${what} permutation(13)`);
    assertEquals(rs.permutation(300), c.permutation_300, `${what} permutation(300)`);
    const evens = Array.from({ length: 10 }, (_, i) => 2 * i);
    assertEquals(rs.choiceWithoutReplacement(evens, 3), c.choice_10_3, `${what} choice`);
    assertEquals(rs.choiceWithoutReplacement([0, 1, 2, 3, 4], 5), c.choice_5_5, `${what} choice`);
    const arr = Array.from({ length: 20 }, (_, i) => 3 * i);
    rs.shuffle(arr);
    assertEquals(arr, c.shuffle_20, `${what} shuffle`);
    assertEquals([rs.nextUint32(), rs.nextUint32()], c.after, `${what} stream position`);
  }
  assertThrows(() => new NumpyRandomState(2 ** 32), RangeError, "2**32 - 1");
  assertThrows(() => new NumpyRandomState(-1), RangeError, "seed -1");
});

Deno.test("trainTestSplit equals scikit-learn's train_test_split index for index", () => {
  let n = 0;
  for (const c of splitFixture.trainTestSplit) {
    const got = trainTestSplit(sets[c.set], {
      trainSize: c.trainSize,
      seed: c.seed,
      stratify: c.stratify ?? true,
    });
    const what = `${c.set} trainSize=${c.trainSize} seed=${c.seed} stratify=${c.stratify ?? true}`;
    assertEquals(got.train, c.train, `${what}: train`);
    assertEquals(got.test, c.test, `${what}: test`);
    n++;
  }
  assert(n > 100, `only ${n} split cases in the fixture`);
});

Deno.test("stratifiedKFold equals scikit-learn's StratifiedKFold", () => {
  for (const c of splitFixture.stratifiedKFold) {
    const y = sets[c.set];
    const folds = stratifiedKFold(y, {
      folds: c.folds,
      shuffle: c.shuffle,
      seed: c.seed ?? undefined,
    });
    const what = `${c.set} folds=${c.folds} shuffle=${c.shuffle} seed=${c.seed}`;
    assertEquals(folds.map((f) => f.test), c.tests, what);
    for (const f of folds) {
      assertEquals(f.train.length + f.test.length, y.length, `${what}: train/test cover all`);
      const inTest = new Set(f.test);
      assert(f.train.every((i) => !inTest.has(i)), `${what}: train and test overlap`);
    }
  }
});

Deno.test("grouped split and k-fold: whole patients, equal to scikit-learn on the patient list", () => {
  const g = splitFixture.grouped;
  const groups = g.groups as string[];
  const labels = g.labels as string[];
  const split = trainTestSplit(labels, { trainSize: 0.8, seed: 42, groups });
  const groupsOf = (idx: number[]) => [...new Set(idx.map((i) => groups[i]))];
  assertEquals(groupsOf(split.train), g.trainGroups);
  assertEquals(groupsOf(split.test), g.testGroups);
  // Every sample of every chosen patient, none twice.
  assertEquals(split.train.length + split.test.length, labels.length);
  const trainGroups = new Set(groupsOf(split.train));
  assert(groupsOf(split.test).every((p) => !trainGroups.has(p)), "a patient is in both splits");
  for (const idx of [split.train, split.test]) {
    for (const p of groupsOf(idx)) {
      const want = groups.flatMap((q, i) => q === p ? [i] : []);
      assertEquals(idx.filter((i) => groups[i] === p), want, `samples of ${p}`);
    }
  }
  const folds = stratifiedKFold(labels, { folds: 5, shuffle: true, seed: 0, groups });
  assertEquals(folds.map((f) => groupsOf(f.test).sort()), g.foldTestGroups);
  for (const f of folds) {
    assertEquals(f.test, [...f.test].sort((a, b) => a - b), "fold indices ascending");
    const test = new Set(groupsOf(f.test));
    assert(groupsOf(f.train).every((p) => !test.has(p)), "a patient is in train and test");
  }
});

Deno.test("split errors name the problem and the fix", () => {
  const y = ["a", "a", "b", "b", "b", "c"];
  assertThrows(() => trainTestSplit(y, { trainSize: 0.5, seed: 0 }), RangeError, `"c" has only 1`);
  assertThrows(() => trainTestSplit(["a", "b"], { trainSize: 1.5, seed: 0 }), RangeError, "1.5");
  assertThrows(() => trainTestSplit(["a", "a"], { trainSize: 0.2, seed: 0 }), RangeError, "empty");
  assertThrows(() => trainTestSplit(["a", 1], { trainSize: 0.5, seed: 0 }), TypeError, "mix");
  assertThrows(() => trainTestSplit(y, { trainSize: 0.5, seed: 0.5 }), RangeError, "seed=0.5");
  assertThrows(
    () =>
      trainTestSplit(["a", "a", "b", "b"], {
        trainSize: 0.5,
        seed: 0,
        groups: ["p", "p", "p", "q"],
      }),
    RangeError,
    `group "p" has two labels`,
  );
  assertThrows(
    () => trainTestSplit(["a", "b"], { trainSize: 0.5, seed: 0, groups: ["p"] }),
    RangeError,
    "one group id per sample",
  );
  assertThrows(() => stratifiedKFold(y, { folds: 1, shuffle: false }), RangeError, "folds=1");
  assertThrows(() => stratifiedKFold(y, { folds: 2, shuffle: true }), RangeError, "needs a seed");
  assertThrows(
    () => stratifiedKFold(y, { folds: 2, shuffle: false, seed: 1 }),
    RangeError,
    "no effect",
  );
  assertThrows(() => stratifiedKFold(y, { folds: 4, shuffle: false }), RangeError, "every class");
  assertThrows(
    () => stratifiedKFold([0.5, 1], { folds: 2, shuffle: false }),
    RangeError,
    "integers",
  );
});

Deno.test("BCCD crops: real folder labels and their 80/20 split match the fixture", () => {
  const root = sharedData();
  if (!root) {
    console.log("skipped: ../shared/data is absent");
    return;
  }
  const dir = `${root}bccd-cropped/BCCD_cropped`;
  const labels: string[] = [];
  const classes = [...Deno.readDirSync(dir)].filter((e) => e.isDirectory).map((e) => e.name)
    .sort();
  for (const c of classes) {
    const files = [...Deno.readDirSync(`${dir}/${c}`)].filter((e) => e.isFile);
    for (let i = 0; i < files.length; i++) labels.push(c);
  }
  assertEquals(labels, sets.bccd_folders, "folder labels (counts 3, 88, 33, 20, 207)");
  const want = splitFixture.trainTestSplit.find((
    c: { set: string; trainSize: number; seed: number },
  ) => c.set === "bccd_folders" && c.trainSize === 0.8 && c.seed === 42);
  const got = trainTestSplit(labels, { trainSize: 0.8, seed: 42 });
  assertEquals(got, { train: want.train, test: want.test });
});
