"""scikit-learn oracle for pomona's reduce step (tests and benchmark).

    pca.py fit FEATURES_DIR (--components K | --variance F) [--reduced DIR]
        Fits sklearn.decomposition.PCA (exact solver, float64) on every features/part-*.parquet
        and prints JSON: n_components, explained_variance(_ratio), components, mean. With
        --reduced, also projects every row with sklearn and reports the largest absolute
        difference from pomona's reduced/part-*.parquet (matched by path).
    pca.py read PCA_FILE
        Reads pomona's pca.safetensors with numpy only (the documented format) and prints it as
        JSON: metadata, shapes, and the arrays.
    pca.py bench FEATURES_FILE --rows N --components K
        Times scikit-learn's PCA (default solver, and the exact covariance_eigh and full solvers)
        on FEATURES_FILE's rows repeated to N rows; prints JSON.
"""

import argparse
import glob
import json
import os
import struct
import sys
import time

import numpy as np
import pyarrow.parquet as pq
from sklearn.decomposition import PCA


def read_features(files):
    paths, rows = [], []
    for f in files:
        t = pq.read_table(f, columns=["path", "features"])
        paths += t.column("path").to_pylist()
        col = t.column("features").combine_chunks()
        d = col.type.list_size
        rows.append(col.values.to_numpy(zero_copy_only=False).reshape(-1, d))
    return paths, np.concatenate(rows).astype(np.float64)


def fit(args):
    files = sorted(glob.glob(os.path.join(args.dir, "features", "part-*.parquet")))
    paths, x = read_features(files)
    n = args.components if args.components is not None else args.variance
    pca = PCA(n_components=n, svd_solver="full").fit(x)
    out = {
        "n_samples": int(x.shape[0]),
        "n_components": int(pca.n_components_),
        "explained_variance": pca.explained_variance_.tolist(),
        "explained_variance_ratio": pca.explained_variance_ratio_.tolist(),
        "components": pca.components_.tolist(),
        "mean": pca.mean_.tolist(),
    }
    if args.reduced:
        ours = {}
        for f in sorted(glob.glob(os.path.join(args.reduced, "part-*.parquet"))):
            t = pq.read_table(f)
            col = t.column("pca").combine_chunks()
            vals = col.values.to_numpy(zero_copy_only=False).reshape(-1, col.type.list_size)
            ours.update(zip(t.column("path").to_pylist(), vals))
        theirs = pca.transform(x)
        mine = np.stack([ours[p] for p in paths]).astype(np.float64)
        out["reduced_rows"] = len(ours)
        out["reduced_max_abs_diff"] = float(np.abs(mine - theirs).max())
        out["reduced_max_abs"] = float(np.abs(theirs).max())
    json.dump(out, sys.stdout)


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    meta = header.pop("__metadata__", {})
    base = 8 + size
    dtypes = {"F64": "<f8", "U64": "<u8", "F32": "<f4"}
    arrays = {}
    for name, t in header.items():
        start, end = t["data_offsets"]
        a = np.frombuffer(data[base + start : base + end], dtype=dtypes[t["dtype"]])
        arrays[name] = a.reshape(t["shape"])
    return meta, arrays


def read(args):
    meta, arrays = read_safetensors(args.file)
    out = {"metadata": meta, "shapes": {k: list(v.shape) for k, v in arrays.items()}}
    out.update({k: v.tolist() for k, v in arrays.items()})
    json.dump(out, sys.stdout)


def bench(args):
    _, x = read_features([args.file])
    reps = -(-args.rows // x.shape[0])
    x = np.tile(x.astype(np.float32), (reps, 1))[: args.rows]
    out = {"rows": int(x.shape[0]), "dim": int(x.shape[1]), "components": args.components}
    for solver in ["auto", "covariance_eigh", "full"]:
        pca = PCA(n_components=args.components, svd_solver=solver)
        t = time.perf_counter()
        pca.fit(x)
        fit_s = time.perf_counter() - t
        t = time.perf_counter()
        pca.transform(x)
        out[solver] = {"fit_seconds": fit_s, "transform_seconds": time.perf_counter() - t}
    json.dump(out, sys.stdout)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fit")
    f.add_argument("dir")
    g = f.add_mutually_exclusive_group(required=True)
    g.add_argument("--components", type=int)
    g.add_argument("--variance", type=float)
    f.add_argument("--reduced")
    r = sub.add_parser("read")
    r.add_argument("file")
    b = sub.add_parser("bench")
    b.add_argument("file")
    b.add_argument("--rows", type=int, default=22688)
    b.add_argument("--components", type=int, default=50)
    args = p.parse_args()
    {"fit": fit, "read": read, "bench": bench}[args.cmd](args)


if __name__ == "__main__":
    main()
