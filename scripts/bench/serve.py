"""The run protocol the benchmark peers share (bench/peers.ts).

A peer builds its work once (imports, model, inputs), then either
- times `--warmup` + `--iters` iterations and prints one JSON line
  {"peer": NAME, "ms": [...], "items": N, ...facts, "max_rss_mib": M}, or
- with `--serve`, runs `--warmup` iterations, prints {"peer": NAME, "ready": true, "items": N,
  ...facts}, then times one iteration per "run" line on stdin, answering {"ms": T} each, until
  "quit" or end of input ({"peer": NAME, "done": true, "max_rss_mib": M}). bloom's benchmark
  keeps such a peer alive and alternates its own runs with the peer's (A B A B ...), so drift
  on a shared machine hits both sides alike and start-up never counts.
"""
import json
import os
import resource
import sys
import time


def add_args(ap, warmup=1, iters=3):
    """The protocol's flags: --warmup, --iters, --serve, --threads."""
    ap.add_argument("--warmup", type=int, default=warmup, help="untimed iterations first")
    ap.add_argument("--iters", type=int, default=iters, help="timed iterations (without --serve)")
    ap.add_argument("--serve", action="store_true",
                    help="time one iteration per 'run' line on stdin (see serve.py)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads to use (torch, BLAS); default: one per CPU")


def threads(args):
    """The thread count asked for, else one per CPU."""
    return args.threads if args.threads and args.threads > 0 else (os.cpu_count() or 1)


def timed(fn):
    """Milliseconds of one call of fn."""
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def run(name, step, items, facts, args):
    """Runs the protocol; step() does one iteration and returns its milliseconds."""
    for _ in range(args.warmup):
        step()
    if args.serve:
        emit({"peer": name, "ready": True, "items": items, **facts})
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "run":
                emit({"ms": step()})
            elif cmd == "quit":
                break
            elif cmd:
                emit({"error": f"unknown command {cmd!r}; expected run or quit"})
        emit({"peer": name, "done": True, "max_rss_mib": rss_mib()})
        return
    times = [step() for _ in range(args.iters)]
    emit({"peer": name, "ms": times, "items": items, **facts, "max_rss_mib": rss_mib()})
