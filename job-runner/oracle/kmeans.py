"""scikit-learn oracle for pomona's k-means (`--clusters`).

    kmeans.py RUN_DIR K
        Reads the run's reduced/part-*.parquet (path, label, pca) and clusters/part-*.parquet
        (path, label, cluster), and prints JSON:
        - "sklearn": KMeans(n_clusters=K, n_init=10, random_state=0) on the same vectors
          (float64): its adjusted Rand index and normalised mutual information against the
          labels, and its inertia;
        - "ours": the same scores of pomona's clusters, computed by scikit-learn, the inertia
          of pomona's clusters (from the vectors' own cluster means), and the purity;
        - "rows": the number of images.
"""

import glob
import json
import os
import sys

import numpy as np
import pyarrow.parquet as pq
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def read(run, folder, columns):
    files = sorted(glob.glob(os.path.join(run, folder, "part-*.parquet")))
    return [pq.read_table(f, columns=columns) for f in files]


def main():
    run, k = sys.argv[1], int(sys.argv[2])
    paths, labels, rows = [], [], []
    for t in read(run, "reduced", ["path", "label", "pca"]):
        paths += t.column("path").to_pylist()
        labels += t.column("label").to_pylist()
        col = t.column("pca").combine_chunks()
        rows.append(col.values.to_numpy(zero_copy_only=False).reshape(-1, col.type.list_size))
    x = np.concatenate(rows).astype(np.float64)
    ours = {}
    for t in read(run, "clusters", ["path", "cluster"]):
        ours.update(zip(t.column("path").to_pylist(), t.column("cluster").to_pylist()))
    mine = np.array([ours[p] for p in paths])
    km = KMeans(n_clusters=k, n_init=10, random_state=0).fit(x)
    inertia = sum(
        float(((x[mine == c] - x[mine == c].mean(axis=0)) ** 2).sum()) for c in np.unique(mine)
    )
    purity = sum(
        max(np.sum((mine == c) & (np.array(labels) == l)) for l in set(labels))
        for c in np.unique(mine)
    ) / len(labels)
    print(json.dumps({
        "rows": int(x.shape[0]),
        "sklearn": {
            "ari": adjusted_rand_score(labels, km.labels_),
            "nmi": normalized_mutual_info_score(labels, km.labels_),
            "inertia": float(km.inertia_),
        },
        "ours": {
            "ari": adjusted_rand_score(labels, mine),
            "nmi": normalized_mutual_info_score(labels, mine),
            "inertia": inertia,
            "purity": float(purity),
        },
    }))


if __name__ == "__main__":
    main()
