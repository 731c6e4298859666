#!/usr/bin/env python3
"""Reference preprocessing + features for pomona's extract-core tests.

PIL decode -> RGB -> Image.resize((S, S), FILTER) -> x/127.5 - 1 (float32,
NHWC) -> onnxruntime CPU, FILTER being --filter (bilinear by default, nearest or
bicubic).  Prints JSON on stdout:

  features.py --model M.onnx IMG...          {"images": [{"path", "features"}]}
  features.py --pixels IMG...                {"images": [{"path", "width", "height",
                                               "decoded", "resized"}]}  (RGB8, row-major)
  features.py --make-cmyk SRC OUT            writes SRC as a CMYK JPEG (no JSON)

Needs: pillow, numpy, onnxruntime (only for --model).
"""
import argparse
import json
import sys

import numpy as np
from PIL import Image


FILTERS = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
}


def load_rgb(path):
    with Image.open(path) as im:
        return im.convert("RGB")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model")
    ap.add_argument("--size", type=int, default=224, help="output width (and height)")
    ap.add_argument("--height", type=int, help="output height if not square")
    ap.add_argument("--pixels", action="store_true")
    ap.add_argument("--filter", choices=sorted(FILTERS), default="bilinear")
    ap.add_argument("--make-cmyk", nargs=2, metavar=("SRC", "OUT"))
    ap.add_argument("images", nargs="*")
    a = ap.parse_args()

    if a.make_cmyk:
        src, out = a.make_cmyk
        load_rgb(src).convert("CMYK").save(out, "JPEG", quality=95)
        return

    size = (a.size, a.height or a.size)
    resample = FILTERS[a.filter]
    out = []
    if a.pixels:
        for p in a.images:
            im = load_rgb(p)
            out.append({
                "path": p,
                "width": im.width,
                "height": im.height,
                "decoded": np.asarray(im, dtype=np.uint8).reshape(-1).tolist(),
                "resized": np.asarray(im.resize(size, resample), dtype=np.uint8)
                .reshape(-1).tolist(),
            })
    else:
        if not a.model:
            ap.error("--model is required unless --pixels or --make-cmyk")
        import onnxruntime as ort

        sess = ort.InferenceSession(a.model, providers=["CPUExecutionProvider"])
        for p in a.images:
            x = np.asarray(load_rgb(p).resize(size, resample), dtype=np.float32)
            x = x / np.float32(127.5) - np.float32(1.0)
            f = sess.run(["features"], {"input": x[None]})[0][0]
            out.append({"path": p, "features": [float(v) for v in f]})
    json.dump({"images": out}, sys.stdout)


if __name__ == "__main__":
    main()
