/**
 * Layout `csv`: a CSV file with an `Image Path,Label` header (BMC style);
 * paths relative to the CSV's folder (absolute paths are taken as they are).
 * Other columns are ignored. Quoted fields (RFC 4180), CRLF and a UTF-8 BOM
 * are understood.
 */
import { dirname, isAbsolute, join, normalize } from "node:path";
import {
  dedupeKeys,
  type Enumeration,
  type InputError,
  keyFromPath,
  LayoutError,
  resolveClasses,
  type SampleSource,
} from "./sample.ts";

/** Splits CSV text into rows of fields (RFC 4180: quotes, doubled quotes, embedded newlines). */
export function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  let row: string[] = [];
  let field = "";
  let quoted = false;
  let i = text.charCodeAt(0) === 0xfeff ? 1 : 0;
  for (; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"') {
        if (text[i + 1] === '"') {
          field += '"';
          i++;
        } else quoted = false;
      } else field += c;
    } else if (c === '"' && field === "") quoted = true;
    else if (c === ",") {
      row.push(field);
      field = "";
    } else if (c === "\n" || c === "\r") {
      if (c === "\r" && text[i + 1] === "\n") i++;
      row.push(field);
      rows.push(row);
      row = [];
      field = "";
    } else field += c;
  }
  if (field !== "" || row.length > 0) {
    row.push(field);
    rows.push(row);
  }
  return rows;
}

/** Lists the samples named by a CSV file. */
export async function enumerateCsv(
  csvPath: string,
  opts: { classes?: string[] } = {},
): Promise<Enumeration> {
  let text: string;
  try {
    text = await Deno.readTextFile(csvPath);
  } catch (e) {
    throw new LayoutError(
      `--input '${csvPath}' cannot be read as a CSV file (${(e as Error).message}); ` +
        `the csv layout takes the path of a file with an 'Image Path,Label' header`,
    );
  }
  const rows = parseCsv(text).filter((r) => !(r.length === 1 && r[0].trim() === ""));
  if (rows.length === 0) throw new LayoutError(`--input '${csvPath}' is empty`);
  const header = rows[0].map((h) => h.trim().toLowerCase());
  const pathCol = header.indexOf("image path");
  const labelCol = header.indexOf("label");
  if (pathCol < 0 || labelCol < 0) {
    throw new LayoutError(
      `--input '${csvPath}' has header '${rows[0].join(",")}', but the csv layout needs ` +
        `columns 'Image Path' and 'Label'; rename the columns, or use --layout imagefolder ` +
        `for a folder per class`,
    );
  }
  const base = dirname(csvPath);
  const errors: InputError[] = [];
  const samples: SampleSource[] = [];
  for (let r = 1; r < rows.length; r++) {
    const cells = rows[r];
    const rawPath = (cells[pathCol] ?? "").trim();
    const label = (cells[labelCol] ?? "").trim();
    if (rawPath === "") {
      errors.push({ path: `${csvPath}:${r + 1}`, reason: "row has an empty 'Image Path'" });
      continue;
    }
    const rel = normalize(rawPath).replace(/\\/g, "/");
    const path = isAbsolute(rel) ? rel : join(base, rel);
    samples.push({ key: keyFromPath(rel), path, rel, label });
  }
  const unique = dedupeKeys(samples, errors);
  const resolved = resolveClasses(unique, errors, opts.classes);
  return { samples: resolved.samples, classes: resolved.classes, errors };
}
