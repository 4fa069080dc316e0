/**
 * The one module tests import assertions from. It wraps `node:assert/strict`
 * (JSR's @std/assert is out of reach from our machines); swapping to another
 * library later means changing this file only.
 */
import assert from "node:assert/strict";

export const assertEquals: <T>(actual: unknown, expected: T, message?: string) => void =
  assert.deepStrictEqual;
export const assertNotEquals: (actual: unknown, expected: unknown, message?: string) => void =
  assert.notDeepStrictEqual;
export const assertStrictEquals: <T>(actual: unknown, expected: T, message?: string) => void =
  assert.strictEqual;

/** Asserts `cond` is truthy. */
export function assert_(cond: unknown, message?: string): asserts cond {
  assert.ok(cond, message);
}
export { assert_ as assert };

/** Asserts `fn` throws an error whose message matches `pattern` (and class, if given). */
export function assertThrows(
  fn: () => unknown,
  // deno-lint-ignore no-explicit-any
  errorClass?: new (...args: any[]) => Error,
  pattern?: RegExp | string,
): Error {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  return checkError(caught, errorClass, pattern);
}

/** Asserts the promise rejects with an error whose message matches `pattern`. */
export async function assertRejects(
  fn: () => Promise<unknown>,
  // deno-lint-ignore no-explicit-any
  errorClass?: new (...args: any[]) => Error,
  pattern?: RegExp | string,
): Promise<Error> {
  let caught: unknown;
  try {
    await fn();
  } catch (e) {
    caught = e;
  }
  return checkError(caught, errorClass, pattern);
}

function checkError(
  caught: unknown,
  // deno-lint-ignore no-explicit-any
  errorClass?: new (...args: any[]) => Error,
  pattern?: RegExp | string,
): Error {
  if (caught === undefined) assert.fail("expected an error, none was thrown");
  if (!(caught instanceof Error)) assert.fail(`expected an Error, got ${String(caught)}`);
  if (errorClass && !(caught instanceof errorClass)) {
    const got = caught as Error;
    assert.fail(`expected ${errorClass.name}, got ${got.name}: ${got.message}`);
  }
  if (pattern !== undefined) {
    const ok = typeof pattern === "string"
      ? caught.message.includes(pattern)
      : pattern.test(caught.message);
    if (!ok) {
      assert.fail(`error message ${JSON.stringify(caught.message)} does not match ${pattern}`);
    }
  }
  return caught;
}

/** Tolerances for `assertClose`: |a − e| ≤ atol + rtol·|e| elementwise. */
export interface Tolerance {
  rtol?: number;
  atol?: number;
}

/** Asserts two numeric arrays agree elementwise within the tolerance; names the worst element. */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  tol: Tolerance = {},
  what = "values",
): void {
  const rtol = tol.rtol ?? 1e-5;
  const atol = tol.atol ?? 1e-6;
  if (actual.length !== expected.length) {
    assert.fail(`${what}: length ${actual.length} != expected ${expected.length}`);
  }
  let worst = -1;
  let worstExcess = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i];
    const e = expected[i];
    if (Number.isNaN(e) && Number.isNaN(a)) continue;
    if (a === e) continue; // covers equal infinities
    const excess = Math.abs(a - e) - (atol + rtol * Math.abs(e));
    if (!(excess <= 0) && (worst < 0 || !(excess <= worstExcess))) {
      worst = i;
      worstExcess = excess;
    }
  }
  if (worst >= 0) {
    assert.fail(
      `${what}: element ${worst} is ${actual[worst]}, expected ${expected[worst]} ` +
        `(rtol ${rtol}, atol ${atol})`,
    );
  }
}
