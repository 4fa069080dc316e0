/**
 * Layout `mil`: patient-level sets (AML Hehr): `<split>/<class>/<patient>/…`
 * images. Every cell carries its patient's class; the patient id is the
 * folder name and must belong to one class only. Without `--split` the source
 * split folders are the output splits; with it, patients are re-split.
 */
import { join } from "node:path";
import {
  dedupeKeys,
  type Enumeration,
  isImageName,
  type ItemError,
  keyFromPath,
  resolveClasses,
  type SampleSource,
} from "./sample.ts";
import { listDir, requireDir, walkImages, walkScope } from "./walk.ts";

/** Lists the cells of a split/class/patient tree. */
export async function enumerateMil(
  root: string,
  opts: { classes?: string[]; followLinks?: boolean } = {},
): Promise<Enumeration> {
  await requireDir(root, "--input");
  const errors: ItemError[] = [];
  const scope = await walkScope(root, errors, opts);
  const cells: SampleSource[] = [];
  const patientClasses = new Map<string, Set<string>>();
  const classFolders = new Set<string>();
  const misplaced = (path: string) =>
    errors.push({
      path,
      reason: "image not under <split>/<class>/<patient>/; the mil layout needs that depth",
    });
  const top = await listDir(root, scope);
  for (const f of top.files) if (isImageName(f)) misplaced(join(root, f));
  for (const split of top.dirs) {
    const splitDir = join(root, split);
    const classes = await listDir(splitDir, scope);
    for (const f of classes.files) if (isImageName(f)) misplaced(join(splitDir, f));
    for (const cls of classes.dirs) {
      classFolders.add(cls);
      const clsDir = join(splitDir, cls);
      const patients = await listDir(clsDir, scope);
      for (const f of patients.files) if (isImageName(f)) misplaced(join(clsDir, f));
      for (const patient of patients.dirs) {
        const found = await walkImages(
          join(clsDir, patient),
          `${split}/${cls}/${patient}`,
          scope,
        );
        if (found.length > 0) {
          const set = patientClasses.get(patient) ?? new Set();
          set.add(cls);
          patientClasses.set(patient, set);
        }
        for (const c of found) {
          cells.push({
            key: keyFromPath(c.rel),
            path: c.path,
            rel: c.rel,
            label: cls,
            patient,
            sourceSplit: split,
          });
        }
      }
    }
  }
  // A patient filed under two classes has no trustworthy label: refuse all its cells.
  const samples = cells.filter((c) => {
    const set = patientClasses.get(c.patient!)!;
    if (set.size === 1) return true;
    errors.push({
      path: c.path,
      reason: `patient '${c.patient}' appears under classes ${
        [...set].sort().map((s) => `'${s}'`).join(" and ")
      }`,
    });
    return false;
  });
  const unique = dedupeKeys(samples, errors);
  const resolved = resolveClasses(unique, errors, opts.classes ?? [...classFolders].sort());
  return { samples: resolved.samples, classes: resolved.classes, errors };
}
