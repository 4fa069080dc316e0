/**
 * What a cell is coloured or grouped by in the embedding figures and the
 * batch-effect report: its label, its predicted class, or its source (the
 * dataset, scanner, site or folder it came from: the file it is in, or a
 * rule on its path, eval/groups.ts).
 */
import type { EmbeddingsFile } from "../data/embeddings_file.ts";
import { InputError } from "../data/errors.ts";
import { makeGrouper } from "./groups.ts";
import type { Label } from "./labels.ts";

/** What `--color-by` accepts. */
export const COLOR_BY = ["label", "predicted", "source"] as const;
/** One of `COLOR_BY`. */
export type ColorBy = typeof COLOR_BY[number];

/**
 * The source of every row of `files` (concatenated in order): `file` (or no
 * rule with several files) names each file; `depth:N` or a regular
 * expression reads it off each cell's path. `flag` names the option in errors.
 */
export function sourcesOf(
  files: readonly EmbeddingsFile[],
  rule: string | undefined,
  flag = "--source-by",
): string[] {
  if (rule === undefined && files.length < 2) {
    throw new InputError(
      `${flag} is needed: with one embeddings file the sources come from the cells' paths ` +
        "(depth:N, the N-th folder, or a regular expression), or pass a second file with --test",
    );
  }
  if (rule === undefined || rule === "file") {
    // File names where they tell the files apart, else the paths as given.
    const base = files.map((f) => f.path.split(/[\\/]/).pop()!);
    const names = new Set(base).size === files.length ? base : files.map((f) => f.path);
    return files.flatMap((f, i) => new Array<string>(f.rows).fill(names[i]));
  }
  const g = makeGrouper(rule, flag);
  return files.flatMap((f) =>
    f.paths.map((p) => {
      try {
        return g(p);
      } catch (e) {
        throw new InputError(`${f.path}: ${(e as Error).message}`);
      }
    })
  );
}

/**
 * The colour key of every row: its label, its prediction (`predicted`, one
 * per row) or its source (`sources`). Errors name what is missing.
 */
export function colorKeys(
  by: ColorBy,
  what: string,
  data: {
    labels: readonly Label[] | null;
    predicted?: readonly Label[];
    sources?: readonly string[];
  },
): Label[] {
  if (by === "label") {
    if (!data.labels) {
      throw new InputError(
        `${what} has no labels to colour by; use --color-by source or predicted`,
      );
    }
    return [...data.labels];
  }
  if (by === "predicted") {
    if (!data.predicted) {
      throw new InputError(`--color-by predicted: no predictions for ${what}`);
    }
    return [...data.predicted];
  }
  if (!data.sources) throw new InputError(`--color-by source: no sources for ${what}`);
  return [...data.sources];
}
