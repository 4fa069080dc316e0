/**
 * The DINO and iBOT projection heads (DINOv2's DINOHead): a 3-layer MLP
 * in → hidden → hidden → bottleneck with GELU, L2-normalisation, then a
 * weight-normalised linear layer without bias to K prototypes.
 * State-dict names: `mlp.0`, `mlp.2`, `mlp.4` (GELUs at 1 and 3) and
 * `last_layer.weight_g` [K, 1], `last_layer.weight_v` [K, bottleneck].
 */
import type { ParamSpec } from "./arena.ts";
import { gelu, l2Normalize, linear, weightNorm } from "./ops.ts";
import type { Params } from "./params.ts";
import type { Tensor } from "./tensor.ts";

/** Shapes of a head. */
export interface HeadConfig {
  inDim: number;
  hidden: number;
  bottleneck: number;
  prototypes: number;
}

/** DinoBloom's heads: 2048 hidden, 256 bottleneck, 65,536 prototypes (large models: 384 / 131,072). */
export function headConfig(inDim: number, large = false): HeadConfig {
  return large
    ? { inDim, hidden: 2048, bottleneck: 384, prototypes: 131072 }
    : { inDim, hidden: 2048, bottleneck: 256, prototypes: 65536 };
}

/** Parameter specs of a head under `prefix` ("dino_head" or "ibot_head"). */
export function headParamSpecs(prefix: string, c: HeadConfig): ParamSpec[] {
  return [
    { name: `${prefix}.mlp.0.weight`, shape: [c.hidden, c.inDim] },
    { name: `${prefix}.mlp.0.bias`, shape: [c.hidden] },
    { name: `${prefix}.mlp.2.weight`, shape: [c.hidden, c.hidden] },
    { name: `${prefix}.mlp.2.bias`, shape: [c.hidden] },
    { name: `${prefix}.mlp.4.weight`, shape: [c.bottleneck, c.hidden] },
    { name: `${prefix}.mlp.4.bias`, shape: [c.bottleneck] },
    { name: `${prefix}.last_layer.weight_g`, shape: [c.prototypes, 1] },
    { name: `${prefix}.last_layer.weight_v`, shape: [c.prototypes, c.bottleneck] },
  ];
}

/** Logits over the prototypes for the rows of x [N, inDim]: [N, K]. */
export function headForward(ps: Params, prefix: string, x: Tensor): Tensor {
  const g = ps.g;
  const p = (n: string) => ps.get(`${prefix}.${n}`);
  return g.tidy(() => {
    let h = gelu(g, linear(g, x, p("mlp.0.weight"), p("mlp.0.bias")));
    h = gelu(g, linear(g, h, p("mlp.2.weight"), p("mlp.2.bias")));
    h = linear(g, h, p("mlp.4.weight"), p("mlp.4.bias"));
    // DINOHead: eps 1e-12 in f32 (1e-6 only under fp16).
    h = l2Normalize(g, h, 1e-12);
    const w = weightNorm(g, p("last_layer.weight_v"), p("last_layer.weight_g"));
    return linear(g, h, w);
  });
}
