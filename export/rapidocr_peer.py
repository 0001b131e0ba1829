#!/usr/bin/env python3
"""RapidOCR as a peer in `edgerun bench ocr`, run as a subprocess on the same images.

It runs the pinned `rapidocr` wheel (export/requirements.txt) as a user would: its own
pipeline, models and defaults (PP-OCRv6 small detector, small recognizer, angle classifier,
onnxruntime), or with the detector swapped for another ONNX file (`--det-model`, e.g. the
PP-OCRv6 tiny detector in models/ocr/det_tiny.onnx). Nothing of edgerun's is used, so the
figures are RapidOCR's own.

Usage:
  python export/rapidocr_peer.py [--det-model PATH] [--threads 1]

Image paths are read from stdin, one per line. The pipeline is loaded and warmed up on
the first image first; then one JSON object per input line is printed to stdout (flushed
each time), the same records as export/reference_ocr.py's e2e mode:

  {"path": P, "ms": M, "items": [{"box": [[x,y]*4], "text": T, "confidence": C}, ...]}
  {"path": P, "error": "..."}

ms is the time of the whole RapidOCR call on the decoded image (detection, classification,
recognition and their pre- and post-processing); reading and decoding the file is not in it.
"""
import argparse
import json
import sys
import time

import cv2


def load_engine(det_model, threads):
    # Imported here so that `--help` works without the wheel installed.
    from rapidocr import RapidOCR

    params = {
        "Global.log_level": "error",
        "EngineConfig.onnxruntime.intra_op_num_threads": threads,
        "EngineConfig.onnxruntime.inter_op_num_threads": 1,
    }
    if det_model:
        params["Det.model_path"] = det_model
    return RapidOCR(params=params)


def items_of(result):
    if result.boxes is None or result.txts is None:
        return []
    items = []
    for quad, text, score in zip(result.boxes, result.txts, result.scores):
        items.append({
            "box": [[int(round(float(x))), int(round(float(y)))] for x, y in quad],
            "text": text,
            "confidence": float(score),
        })
    return items


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--det-model", default=None,
                    help="detector ONNX file in place of RapidOCR's default")
    ap.add_argument("--threads", type=int, default=1,
                    help="onnxruntime intra-op threads per model")
    args = ap.parse_args()
    sys.stdin.reconfigure(encoding="utf-8")
    sys.stdout.reconfigure(encoding="utf-8")
    cv2.setNumThreads(1)
    engine = load_engine(args.det_model, args.threads)
    warmed = False
    out = sys.stdout
    for line in sys.stdin:
        path = line.strip()
        if not path:
            continue
        img = cv2.imread(path, cv2.IMREAD_COLOR)
        if img is None or img.size == 0:
            out.write(json.dumps({"path": path, "error": "cannot read image"}) + "\n")
            out.flush()
            continue
        try:
            if not warmed:
                engine(img)
                warmed = True
            t0 = time.perf_counter()
            result = engine(img)
            ms = (time.perf_counter() - t0) * 1000.0
            record = {"path": path, "ms": round(ms, 3), "items": items_of(result)}
        except Exception as e:  # report, never stop: the benchmark names the image
            record = {"path": path, "error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(record, ensure_ascii=False) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
