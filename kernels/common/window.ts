/**
 * Binding windows: how a kernel binds any element range of any tensor.
 *
 * A storage binding must start at a multiple of
 * `minStorageBufferOffsetAlignment` (256 B here) and may hold at most
 * `maxStorageBufferBindingSize` bytes (128 MiB here). A window starts at the
 * aligned byte at or below the range it binds, so the kernel finds its data
 * `shift` elements in; the price is up to alignment − 4 bytes of slack.
 */
import { GpuLimitError } from "../errors.ts";
import { fmtBytes } from "../pool.ts";
import type { Gpu, GpuLimits } from "../runtime.ts";
import type { BufferView, GpuTensor } from "../tensor.ts";
import { fmtShape } from "./shape.ts";

/** The two limits that decide how a dispatch binds and splits its tensors. */
export type BindingLimits = Pick<
  GpuLimits,
  "maxStorageBufferBindingSize" | "minStorageBufferOffsetAlignment"
>;

/** A bindable view and where the wanted range starts inside it. */
export interface Window {
  view: BufferView;
  /** Elements between the view's (aligned) start and the first element wanted. */
  shift: number;
}

/**
 * The window over elements [first, end) of `t`: a view whose start is
 * aligned down to `minStorageBufferOffsetAlignment`, and the element `shift`
 * of `first` inside it.
 */
export function bindWindow(
  gpu: { readonly limits: Pick<GpuLimits, "minStorageBufferOffsetAlignment"> },
  t: BufferView,
  first: number,
  end: number,
): Window {
  const align = gpu.limits.minStorageBufferOffsetAlignment;
  const startByte = t.offset + first * 4;
  const viewStart = Math.floor(startByte / align) * align;
  return {
    view: { buffer: t.buffer, offset: viewStart, size: t.offset + end * 4 - viewStart },
    shift: (startByte - viewStart) / 4,
  };
}

/** Elements one window may hold, less the slack an aligned-down start may add. */
export function bindableElements(gpu: Pick<Gpu, "limits">): number {
  return Math.floor(gpu.limits.maxStorageBufferBindingSize / 4) -
    gpu.limits.minStorageBufferOffsetAlignment / 4;
}

/**
 * Throws `GpuLimitError` naming `op` unless `bytes` (of `what`, which cannot
 * be split) fit one binding; `fix` ends the message with what the caller can do.
 */
export function checkBindingBytes(
  gpu: Pick<Gpu, "limits">,
  op: string,
  what: string,
  bytes: number,
  fix: string,
): void {
  const max = gpu.limits.maxStorageBufferBindingSize;
  if (bytes > max) {
    throw new GpuLimitError(
      `${op}: ${what} take ${bytes} B, over the ${fmtBytes(max)} of ` +
        `maxStorageBufferBindingSize; ${fix}`,
    );
  }
}

/** Throws `GpuLimitError` naming `op` and `what` unless `t` fits one window. */
export function checkBindable(gpu: Pick<Gpu, "limits">, op: string, what: string, t: GpuTensor) {
  if (t.numel > bindableElements(gpu)) {
    throw new GpuLimitError(
      `${op}: ${what} ${fmtShape(t.shape)} is ${t.size} B, over maxStorageBufferBindingSize ` +
        `(${gpu.limits.maxStorageBufferBindingSize} B); split the rows into smaller calls`,
    );
  }
}

/**
 * Whether rows of `n` elements of the tensors `ts` can be read as vec4: `n`
 * is a multiple of 4 and each tensor starts on a 16-byte boundary.
 */
export function vec4Rows(n: number, ...ts: BufferView[]): boolean {
  return n % 4 === 0 && ts.every((t) => t.offset % 16 === 0);
}
