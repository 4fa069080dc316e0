/**
 * Suggestions for misspelt names ("did you mean …?"): the command line's
 * flags and choices, and the weights registry's model names.
 */

/**
 * Edit distance between two strings: insertions, deletions, substitutions
 * and swaps of two neighbouring letters each count 1 (optimal string
 * alignment), so "wieghts" is 1 from "weights".
 */
export function editDistance(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) {
        d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.length][b.length];
}

/**
 * The known name closest to `word`, when close enough to be a likely typo
 * (at most a third of its letters off, and at least one right), or the
 * single known name it is a prefix of; else undefined.
 */
export function closest(word: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  for (const k of known) {
    const d = editDistance(word.toLowerCase(), k.toLowerCase());
    if (d < bestD) [best, bestD] = [k, d];
  }
  if (best !== undefined && bestD <= Math.max(1, Math.floor(Math.max(word.length, 3) / 3))) {
    return best;
  }
  const prefixed = known.filter((k) => word.length >= 2 && k.startsWith(word));
  return prefixed.length === 1 ? prefixed[0] : undefined;
}
