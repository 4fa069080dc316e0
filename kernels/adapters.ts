/**
 * Adapter classes: the families whose kernels want the same shapes (a CPU rasteriser, and the
 * four GPU vendors bloom users meet). Classes pick the shipped defaults (`defaults.ts`) that
 * run before, or instead of, any tuning; tuning on the running adapter still overrides them.
 */
import type { AdapterDescription } from "./runtime.ts";

/** The adapter families with their own kernel defaults. */
export type AdapterClass =
  | "software"
  | "swiftshader"
  | "nvidia"
  | "amd"
  | "intel"
  | "apple"
  | "other";

/** Every class, in the order the defaults table lists them. */
export const ADAPTER_CLASSES: readonly AdapterClass[] = [
  "software",
  "swiftshader",
  "nvidia",
  "amd",
  "intel",
  "apple",
  "other",
];

/** PCI vendor ids as WebGPU reports them (decimal or hex strings, depending on the backend). */
const VENDOR_IDS: Record<number, AdapterClass> = {
  0x10de: "nvidia",
  0x1002: "amd",
  0x1022: "amd",
  0x8086: "intel",
  0x106b: "apple",
};

const NAME_PATTERNS: [RegExp, AdapterClass][] = [
  [/llvmpipe|lavapipe|softpipe|\bwarp\b|microsoft basic render/i, "software"],
  [/nvidia|geforce|quadro|tesla|\brtx\b|\bgtx\b|\b[ahlv]100\b|\bh200\b|\bl40/i, "nvidia"],
  [/\bamd\b|radeon|instinct|\bradv\b/i, "amd"],
  [/intel|\biris\b|\barc\b|\buhd\b/i, "intel"],
  [/apple|\bm[1-9]\b/i, "apple"],
];

/**
 * The class of an adapter: SwiftShader by name, software for other fallback adapters and known
 * rasterisers, else by
 * vendor id, else by name; "other" when nothing matches.
 */
export function adapterClass(
  a: Pick<AdapterDescription, "name" | "vendor" | "isFallback"> & { architecture?: string },
): AdapterClass {
  // Chromium names SwiftShader only in `architecture` (vendor "google", no description).
  const text = `${a.name} ${a.vendor} ${a.architecture ?? ""}`;
  // Chromium's rasteriser first: it reports itself as a fallback adapter too, but kills
  // shaders that llvmpipe compiles slowly and runs well (see its defaults).
  if (/swiftshader/i.test(text)) return "swiftshader";
  if (a.isFallback) return "software";
  if (NAME_PATTERNS[0][0].test(text)) return "software";
  const v = a.vendor.trim();
  const id = /^0x[0-9a-f]+$/i.test(v) ? parseInt(v, 16) : /^\d+$/.test(v) ? Number(v) : NaN;
  if (VENDOR_IDS[id]) return VENDOR_IDS[id];
  for (const [re, cls] of NAME_PATTERNS.slice(1)) if (re.test(text)) return cls;
  return "other";
}
