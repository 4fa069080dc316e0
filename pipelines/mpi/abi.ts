/**
 * The two binary interfaces of MPI libraries in the wild, as far as bloom
 * uses them. Their C headers agree on function names and arguments but not
 * on what a handle (communicator, datatype, reduction op) is:
 *
 * - Open MPI (libmpi.so.40): a handle is a pointer, the address of a global
 *   object the library exports (`MPI_COMM_WORLD` is `&ompi_mpi_comm_world`);
 *   `MPI_IN_PLACE` is `(void *) 1`.
 * - MPICH and its ABI family (libmpich.so.12, Intel MPI's and Cray's
 *   libmpi.so.12, MVAPICH): a handle is a 32-bit integer constant
 *   (`MPI_COMM_WORLD` = 0x44000000); `MPI_IN_PLACE` is `(void *) -1`.
 *
 * Which one a library speaks is read from the library itself (Open MPI's
 * exports `ompi_mpi_comm_world`), not from its file name.
 */

/** Element types bloom reduces or moves. */
export type DataType = "f32" | "f64" | "i32" | "u8";
/** Reductions bloom uses. */
export type ReduceOp = "sum" | "max" | "min";
/** The two ABIs. */
export type AbiName = "openmpi" | "mpich";

/** A handle as the FFI passes it: a pointer (Open MPI) or an int (MPICH). */
export type Handle = Deno.PointerValue | number;

/** Everything ABI-specific bloom needs, once a library is open. */
export interface Abi {
  name: AbiName;
  /** How handles are declared in FFI signatures. */
  handle: "pointer" | "i32";
  commWorld: Handle;
  types: Record<DataType, Handle>;
  ops: Record<ReduceOp, Handle>;
  inPlace: Deno.PointerValue;
  /** MPI_STATUS_IGNORE is not needed: bloom calls nothing that returns a status. */
}

/** MPICH's handle constants (mpi.h of MPICH 3 and 4; the same in Intel MPI's). */
export const MPICH_HANDLES = {
  commWorld: 0x44000000,
  types: { f32: 0x4c00040a, f64: 0x4c00080b, i32: 0x4c000405, u8: 0x4c00010d },
  ops: { max: 0x58000001, min: 0x58000002, sum: 0x58000003 },
} as const satisfies {
  commWorld: number;
  types: Record<DataType, number>;
  ops: Record<ReduceOp, number>;
};

/** The global objects Open MPI's handles point at, by bloom's names. */
export const OPENMPI_SYMBOLS = {
  commWorld: "ompi_mpi_comm_world",
  types: {
    f32: "ompi_mpi_float",
    f64: "ompi_mpi_double",
    i32: "ompi_mpi_int",
    u8: "ompi_mpi_byte",
  },
  ops: { sum: "ompi_mpi_op_sum", max: "ompi_mpi_op_max", min: "ompi_mpi_op_min" },
} as const satisfies {
  commWorld: string;
  types: Record<DataType, string>;
  ops: Record<ReduceOp, string>;
};

/** MPI_THREAD_* levels (the same numbers in both ABIs). */
export const THREAD_LEVEL = { single: 0, funneled: 1, serialized: 2, multiple: 3 } as const;

/** Every Open MPI static bloom reads, as Deno.dlopen static declarations (optional: probing). */
export function openMpiStatics(): Record<string, { type: "pointer"; optional: true }> {
  const names = [
    OPENMPI_SYMBOLS.commWorld,
    ...Object.values(OPENMPI_SYMBOLS.types),
    ...Object.values(OPENMPI_SYMBOLS.ops),
  ];
  return Object.fromEntries(names.map((n) => [n, { type: "pointer", optional: true } as const]));
}

/**
 * The ABI of a library whose Open MPI statics were probed (`statics[name]`
 * is the symbol's address, null where absent): Open MPI when
 * `ompi_mpi_comm_world` is there, else MPICH's.
 */
export function abiFromStatics(statics: Record<string, Deno.PointerValue | undefined>): Abi {
  if (!statics[OPENMPI_SYMBOLS.commWorld]) {
    return {
      name: "mpich",
      handle: "i32",
      commWorld: MPICH_HANDLES.commWorld,
      types: { ...MPICH_HANDLES.types },
      ops: { ...MPICH_HANDLES.ops },
      inPlace: Deno.UnsafePointer.create(0xffffffffffffffffn),
    };
  }
  const need = (name: string): Deno.PointerValue => {
    const p = statics[name];
    if (!p) {
      throw new Error(
        `the MPI library exports ompi_mpi_comm_world but not ${name}: an Open MPI too old or ` +
          `too unusual for bloom (Open MPI 3 or later is needed)`,
      );
    }
    return p;
  };
  const pick = <K extends string>(table: Record<K, string>) =>
    Object.fromEntries(
      Object.entries<string>(table).map(([k, name]) => [k, need(name)]),
    ) as Record<K, Deno.PointerValue>;
  return {
    name: "openmpi",
    handle: "pointer",
    commWorld: need(OPENMPI_SYMBOLS.commWorld),
    types: pick(OPENMPI_SYMBOLS.types),
    ops: pick(OPENMPI_SYMBOLS.ops),
    inPlace: Deno.UnsafePointer.create(1n),
  };
}
