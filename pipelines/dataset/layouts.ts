/** The dataset layouts `deno task ingest --layout` knows, by name. */
import { enumerateCsv } from "./csv.ts";
import { enumerateImageFolder } from "./imagefolder.ts";
import { enumerateList } from "./list.ts";
import { enumerateMil } from "./mil.ts";
import type { Enumeration } from "./sample.ts";
import { enumerateVoc } from "./voc.ts";

/** Names accepted by --layout. */
export const LAYOUTS = ["imagefolder", "csv", "voc", "mil", "list"] as const;
/** One of `LAYOUTS`. */
export type Layout = typeof LAYOUTS[number];

/** Whether `s` names a layout. */
export function isLayout(s: string): s is Layout {
  return (LAYOUTS as readonly string[]).includes(s);
}

/**
 * Enumerates `input` with the named layout. `classes` is --classes (voc: the
 * wanted boxes); `followLinks` (--follow-links) lets folder walks follow
 * symbolic links out of the input root.
 */
export function enumerate(
  layout: Layout,
  input: string,
  opts: { classes?: string[]; followLinks?: boolean } = {},
): Promise<Enumeration> {
  switch (layout) {
    case "imagefolder":
      return enumerateImageFolder(input, opts);
    case "csv":
      return enumerateCsv(input, opts);
    case "voc":
      return enumerateVoc(input, opts);
    case "mil":
      return enumerateMil(input, opts);
    case "list":
      return enumerateList(input);
  }
}
