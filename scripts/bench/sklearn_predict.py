#!/usr/bin/env python3
"""The scikit-learn peer of bench/predict.ts: the same prediction on the same features.

Reads the saved heads bloom wrote (a kNN head with its reference features copied in, and a
linear-probe head; both safetensors, parsed here without the safetensors package) and the query
features (.npy), then times what bloom's `predict` row times: a brute-force
KNeighborsClassifier(n_neighbors=k, algorithm="brute") fitted on the reference, its
predict_proba on the queries, and a multinomial LogisticRegression carrying the probe's
coef_/intercept_ giving predict_proba on the queries. Threads: `--threads N` sets
OMP_NUM_THREADS and OPENBLAS_NUM_THREADS before numpy loads (scikit-learn's kNN runs its
OpenMP threads over query chunks, each calling single-threaded BLAS). Iterations are timed by
the protocol of serve.py (bench/peers.ts); items are query rows. Where scikit-learn cannot be
imported it prints {"peer": "sklearn_predict", "unavailable": "..."}.

Usage: /usr/bin/python3 scripts/bench/sklearn_predict.py --knn knn.safetensors
       --probe probe.safetensors --queries queries.npy [--threads N] [--serve]
"""
import argparse
import json
import os
import struct

import serve

DTYPES = {"F32": "<f4", "F64": "<f8", "I32": "<i4", "I64": "<i8"}


def read_safetensors(path):
    import numpy as np

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = f.read()
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, t in header.items():
        a, b = t["data_offsets"]
        tensors[name] = np.frombuffer(data[a:b], dtype=DTYPES[t["dtype"]]).reshape(t["shape"])
    return tensors, meta


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--knn", required=True)
    ap.add_argument("--probe", required=True)
    ap.add_argument("--queries", required=True)
    serve.add_args(ap, warmup=1, iters=1)
    args = ap.parse_args()
    threads = serve.threads(args)
    # Before numpy and scikit-learn load their BLAS and OpenMP runtimes.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    try:
        import numpy as np
        import sklearn
        from sklearn.linear_model import LogisticRegression
        from sklearn.neighbors import KNeighborsClassifier
    except ImportError as e:
        serve.emit({"peer": "sklearn_predict", "unavailable": f"sklearn missing: {e}"})
        return
    knn_t, knn_meta = read_safetensors(args.knn)
    probe_t, probe_meta = read_safetensors(args.probe)
    classes = np.array(json.loads(knn_meta["classes"]))
    reference = knn_t["features"]
    labels = classes[knn_t["label_codes"]]
    k = int(knn_meta["k"])
    queries = np.load(args.queries)
    lr = LogisticRegression(multi_class="multinomial")
    lr.classes_ = np.array(json.loads(probe_meta["classes"]))
    lr.coef_ = probe_t["coef"]
    lr.intercept_ = probe_t["intercept"]

    def once():
        clf = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(reference, labels)
        clf.predict_proba(queries)
        lr.predict_proba(queries)

    facts = {"sklearn": sklearn.__version__, "threads": threads}
    serve.run("sklearn_predict", lambda: serve.timed(once), int(queries.shape[0]), facts, args)


if __name__ == "__main__":
    main()
