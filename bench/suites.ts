/** Every benchmark suite, in run order. Add a suite by importing it here. */
import { appSuite } from "./app.ts";
import { attentionSuite } from "./attention.ts";
import { augmentSuite } from "./augment.ts";
import { embedSuite } from "./embed.ts";
import type { BenchSuite } from "./harness.ts";
import { ingestSuite } from "./ingest.ts";
import { matmulSuite } from "./matmul.ts";
import { modelSuite } from "./model.ts";
import { mpiSuite } from "./mpi.ts";
import { normsSuite } from "./norms.ts";
import { optimSuite } from "./optim.ts";
import { pointwiseSuite } from "./pointwise.ts";
import { predictSuite } from "./predict.ts";
import { trainSuite } from "./train.ts";

export const suites: BenchSuite[] = [
  pointwiseSuite,
  normsSuite,
  optimSuite,
  augmentSuite,
  ingestSuite,
  matmulSuite,
  attentionSuite,
  modelSuite,
  embedSuite,
  trainSuite,
  mpiSuite,
  predictSuite,
  appSuite,
];
