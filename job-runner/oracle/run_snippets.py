#!/usr/bin/env python3
"""Runs the Python snippets of a Markdown guide against a pomona run, for the docs tests.

  run_snippets.py GUIDE.md RUN

Every fenced block whose info string is `python NAME` is run, in the order of the guide, each
in a fresh namespace holding RUN (the run's output folder, as a string). Prints JSON:

  {NAME: {VARIABLE: SHAPE}}

with the shape of every numpy array and pandas DataFrame the block left behind, and
[rows, columns] of every Spark DataFrame. A block that raises fails the whole run (exit 1).
Blocks of other languages (SQL for Athena, shell) are not run.
"""
import json
import re
import sys
import traceback

FENCE = re.compile(r"^```python[ \t]+([\w-]+)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


def shape(value):
    try:
        import numpy as np
        import pandas as pd
    except ImportError:
        return None
    if isinstance(value, np.ndarray):
        return list(value.shape)
    if isinstance(value, pd.DataFrame):
        return list(value.shape)
    try:
        from pyspark.sql import DataFrame
    except ImportError:
        return None
    if isinstance(value, DataFrame):
        return [value.count(), len(value.columns)]
    return None


def main():
    guide, run = sys.argv[1], sys.argv[2]
    text = open(guide, encoding="utf-8").read()
    blocks = FENCE.findall(text)
    if not blocks:
        sys.exit(f"no `python NAME` block in {guide}")
    report = {}
    for name, code in blocks:
        namespace = {"RUN": run, "__name__": f"snippet_{name}"}
        try:
            exec(compile(code, f"{guide}:{name}", "exec"), namespace)
        except Exception:
            traceback.print_exc()
            sys.exit(f"snippet {name} failed")
        shapes = {}
        for var, value in namespace.items():
            if var.startswith("_"):
                continue
            s = shape(value)
            if s is not None:
                shapes[var] = s
        report[name] = shapes
        print(f"snippet {name}: {shapes}", file=sys.stderr)
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
