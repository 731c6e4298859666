#!/usr/bin/env python3
"""How far apart two pomona runs' features are, image by image; docs/from-spark.md's figures.

  compare_runs.py RUN_A RUN_B          cosine of each image's features in A and in B (matched
                                       by path): mean, 1st percentile, min; and the fraction of
                                       images whose nearest other image (cosine) is the same
  compare_runs.py --spark SPARK_JSON   the offset of Spark's uncentred projections
                                       (job-runner/oracle/spark_pca.py's output): per component,
                                       the mean of Spark's values (= mean · pc, what centring
                                       would remove) against their standard deviation

Prints one JSON object. Needs numpy and pyarrow.
"""
import json
import sys

import numpy as np
import pyarrow.dataset as ds


def features(run):
    t = ds.dataset(f"{run}/features/", format="parquet").to_table(columns=["path", "features"])
    paths = t.column("path").to_pylist()
    x = np.stack(t.column("features").to_numpy(zero_copy_only=False)).astype(np.float64)
    order = np.argsort(paths)
    return [paths[i] for i in order], x[order]


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def nearest(x):
    u = unit(x)
    sim = u @ u.T
    np.fill_diagonal(sim, -np.inf)
    return sim.argmax(axis=1)


def compare(a, b):
    pa, xa = features(a)
    pb, xb = features(b)
    if pa != pb:
        sys.exit("the runs hold different images")
    cos = (unit(xa) * unit(xb)).sum(axis=1)
    return {
        "images": len(pa),
        "cosine_mean": float(cos.mean()),
        "cosine_p01": float(np.percentile(cos, 1)),
        "cosine_min": float(cos.min()),
        "same_nearest_neighbour": float((nearest(xa) == nearest(xb)).mean()),
    }


def spark_offset(path):
    spark = json.load(open(path))
    z = np.array(list(spark["rows"].values()))
    offset, spread = z.mean(axis=0), z.std(axis=0)
    return {
        "images": len(z),
        "k": int(spark["k"]),
        "offset": [round(float(v), 4) for v in offset],
        "std": [round(float(v), 4) for v in spread],
        "offset_over_std": [round(float(v), 3) for v in offset / spread],
        "features_mean_norm": float(np.linalg.norm(spark["mean"])),
    }


def main():
    if sys.argv[1] == "--spark":
        out = spark_offset(sys.argv[2])
    else:
        out = compare(sys.argv[1], sys.argv[2])
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
