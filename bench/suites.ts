/** Every benchmark suite, in run order. Add a suite by importing it here. */
import type { BenchSuite } from "./harness.ts";

export const suites: BenchSuite[] = [];
