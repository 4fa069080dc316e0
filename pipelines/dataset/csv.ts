/**
 * Layout `csv`: a CSV file with an `Image Path,Label` header (BMC style);
 * paths relative to the CSV's folder (absolute paths are taken as they are).
 * Other columns are ignored. Quoted fields (RFC 4180), CRLF and a UTF-8 BOM
 * are understood.
 */
import { dirname, isAbsolute, join, normalize } from "node:path";
import {
  badPathReason,
  dedupeKeys,
  type Enumeration,
  type ItemError,
  keyFromPath,
  LayoutError,
  resolveClasses,
  type SampleSource,
} from "./sample.ts";

/** A parsed CSV row and the line it starts on (1-based). */
export interface CsvRow {
  fields: string[];
  line: number;
}

/**
 * Splits CSV text into rows of fields (RFC 4180: quotes, doubled quotes,
 * embedded newlines), each with its line number, in one pass. A quoted field
 * still open at the end of the text is a bad row: it is reported, and the
 * text after that row's first line is read again with quotes closed at line
 * ends, so one stray quote costs one row, not the rest of the file (and the
 * text is read at most twice).
 */
export function parseCsvRows(text: string): { rows: CsvRow[]; bad: CsvRow[] } {
  const rows: CsvRow[] = [];
  const bad: CsvRow[] = [];
  const n = text.length;
  let i = text.charCodeAt(0) === 0xfeff ? 1 : 0;
  let line = 1;
  let multiline = true;
  /** Index just past the line break ending at i ("\r\n" counts once). */
  const pastBreak = (at: number) => (text[at] === "\r" && text[at + 1] === "\n" ? at + 2 : at + 1);
  while (i < n) {
    const startLine = line;
    const startAt = i;
    const fields: string[] = [];
    let field = "";
    let quoted = false;
    let ended = false;
    while (i < n) {
      const c = text[i];
      if (quoted) {
        if (c === '"') {
          if (text[i + 1] === '"') {
            field += '"';
            i += 2;
          } else {
            quoted = false;
            i++;
          }
        } else if (c === "\n" || c === "\r") {
          if (!multiline) break; // a quote left open at the line's end: a bad row
          const next = pastBreak(i);
          field += text.slice(i, next);
          line++;
          i = next;
        } else {
          field += c;
          i++;
        }
      } else if (c === '"' && field === "") {
        quoted = true;
        i++;
      } else if (c === ",") {
        fields.push(field);
        field = "";
        i++;
      } else if (c === "\n" || c === "\r") {
        i = pastBreak(i);
        line++;
        ended = true;
        break;
      } else {
        field += c;
        i++;
      }
    }
    if (quoted) {
      bad.push({ fields: [...fields, field], line: startLine });
      // Read again from the line after this row's first line, quotes closed at line ends.
      multiline = false;
      let nl = startAt;
      while (nl < n && text[nl] !== "\n" && text[nl] !== "\r") nl++;
      i = nl < n ? pastBreak(nl) : n;
      line = startLine + 1;
      continue;
    }
    if (ended || field !== "" || fields.length > 0) {
      fields.push(field);
      rows.push({ fields, line: startLine });
    }
  }
  return { rows, bad };
}

/** The rows of CSV text as fields (`parseCsvRows` without line numbers and bad rows). */
export function parseCsv(text: string): string[][] {
  return parseCsvRows(text).rows.map((r) => r.fields);
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
  const parsed = parseCsvRows(text);
  const rows = parsed.rows.filter((r) => !(r.fields.length === 1 && r.fields[0].trim() === ""));
  if (rows.length === 0) throw new LayoutError(`--input '${csvPath}' is empty`);
  const header = rows[0].fields.map((h) => h.trim().toLowerCase());
  const pathCol = header.indexOf("image path");
  const labelCol = header.indexOf("label");
  if (pathCol < 0 || labelCol < 0) {
    throw new LayoutError(
      `--input '${csvPath}' has header '${rows[0].fields.join(",")}', but the csv layout ` +
        `needs columns 'Image Path' and 'Label'; rename the columns, or use --layout ` +
        `imagefolder for a folder per class`,
    );
  }
  const base = dirname(csvPath);
  const errors: ItemError[] = parsed.bad.map((r) => ({
    path: `${csvPath}:${r.line}`,
    reason: "row has a quoted field that is never closed; fix its quotes",
  }));
  const samples: SampleSource[] = [];
  for (const { fields, line } of rows.slice(1)) {
    const where = `${csvPath}:${line}`;
    const rawPath = (fields[pathCol] ?? "").trim();
    const label = (fields[labelCol] ?? "").trim();
    if (rawPath === "") {
      errors.push({ path: where, reason: "row has an empty 'Image Path'" });
      continue;
    }
    const why = badPathReason(rawPath);
    if (why) {
      errors.push({ path: where, reason: `row's 'Image Path' ${why}` });
      continue;
    }
    const rel = normalize(rawPath).replace(/\\/g, "/");
    samples.push({
      key: keyFromPath(rel),
      path: isAbsolute(rel) ? rel : join(base, rel),
      rel,
      label,
    });
  }
  const unique = dedupeKeys(samples, errors);
  const resolved = resolveClasses(unique, errors, opts.classes);
  return { samples: resolved.samples, classes: resolved.classes, errors };
}
