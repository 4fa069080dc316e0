/**
 * Runs scripts/oracles/vit_features.py (Debian's python3 with torch) and
 * loads its outputs, for the ViT-vs-PyTorch tests.
 */
import { readNpy } from "../data/npy.ts";

/** Arguments of the oracle script (see its docstring). */
export interface OracleArgs {
  arch?: string;
  dim?: number;
  depth?: number;
  heads?: number;
  mlp?: number;
  ffn?: "mlp" | "swiglu";
  registers?: number;
  posGrid?: number;
  interp?: "runtime" | "size";
  image?: number;
  batch?: number;
  seed?: number;
  masks?: boolean;
  grads?: boolean;
  head?: boolean;
}

/** What the oracle wrote. */
export interface OracleRun {
  dir: string;
  meta: { grads: string[]; loss: number; [k: string]: unknown };
  npy(name: string): Promise<{ shape: number[]; data: Float32Array }>;
}

/** Runs the oracle into a fresh temp dir. */
export async function runVitOracle(args: OracleArgs): Promise<OracleRun> {
  const dir = await Deno.makeTempDir({ prefix: "bloom-vit-oracle-" });
  // Its files are read lazily by the test; removed when the test process ends.
  globalThis.addEventListener("unload", () => {
    try {
      Deno.removeSync(dir, { recursive: true });
    } catch { /* already removed by the test */ }
  });
  const script = new URL("../scripts/oracles/vit_features.py", import.meta.url).pathname;
  const a = [script, dir];
  const flag = (k: string, v: unknown) => {
    if (v === undefined || v === false) return;
    a.push(`--${k}`);
    if (v !== true) a.push(String(v));
  };
  flag("arch", args.arch);
  flag("dim", args.dim);
  flag("depth", args.depth);
  flag("heads", args.heads);
  flag("mlp", args.mlp);
  flag("ffn", args.ffn);
  flag("registers", args.registers);
  flag("pos-grid", args.posGrid);
  flag("interp", args.interp);
  flag("image", args.image);
  flag("batch", args.batch);
  flag("seed", args.seed);
  flag("masks", args.masks);
  flag("grads", args.grads);
  flag("head", args.head);
  const out = await new Deno.Command("/usr/bin/python3", { args: a, stderr: "piped" }).output();
  if (!out.success) {
    throw new Error(`vit oracle failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  const meta = JSON.parse(await Deno.readTextFile(`${dir}/meta.json`));
  return {
    dir,
    meta,
    npy: async (name) => {
      const r = await readNpy(`${dir}/${name}.npy`);
      return { shape: r.shape, data: r.data };
    },
  };
}

/** ‖a − b‖ / ‖b‖ in float64. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < b.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}
