#!/usr/bin/env python3
"""Spark ML's PCA on a pomona run's features, for the Spark PCA import test.

  spark_pca.py RUN MODEL_DIR OUT_JSON --k K

Reads RUN/features/*.parquet with Spark (the features column through array_to_vector), fits
pyspark.ml.feature.PCA(k=K), saves the PCAModel to MODEL_DIR with model.save(), transforms
every row with it and writes OUT_JSON:

  {"spark": VERSION, "k": K, "rows": {path: [K values of PCAModel.transform]},
   "mean": [column means of the features], "explained_variance": [...]}

Needs pyspark (and Java 17 or 21 on the PATH). Runs Spark locally (local[2], no UI).
"""
import argparse
import json
import os
import sys

from pyspark.ml.feature import PCA
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.ml.stat import Summarizer
from pyspark.sql import SparkSession


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("model_dir")
    ap.add_argument("out_json")
    ap.add_argument("--k", type=int, required=True)
    a = ap.parse_args()

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("pomona-spark-pca")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    df = spark.read.parquet(os.path.join(a.run, "features")).select(
        "path", array_to_vector("features").alias("features")
    )
    model = PCA(k=a.k, inputCol="features", outputCol="pca").fit(df)
    model.save(a.model_dir)
    rows = {
        r["path"]: list(r["pca"])
        for r in model.transform(df).select("path", vector_to_array("pca").alias("pca")).collect()
    }
    mean = df.select(Summarizer.mean(df.features).alias("m")).first()["m"]
    with open(a.out_json, "w") as f:
        json.dump(
            {
                "spark": spark.version,
                "k": a.k,
                "rows": rows,
                "mean": list(mean),
                "explained_variance": list(model.explainedVariance),
            },
            f,
        )
    spark.stop()


if __name__ == "__main__":
    main()
