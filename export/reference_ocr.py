#!/usr/bin/env python3
"""Reference OCR in Python (onnxruntime), run by the Rust benchmark as a subprocess.

It implements the published PaddleOCR / RapidOCR inference pipeline for the
PP-OCRv6 models in models/ocr/ so that the Rust runtime can be compared with it,
string for string and in speed.

Usage:
  python export/reference_ocr.py --models models/ocr --mode crops|e2e \
      --rec tiny|small|cascade [--threshold 0.9] [--limit 960] [--threads 1] [--ascii]
      [--batch 6] [--width-steps] [--min-confidence 0.5]

Image paths are read from stdin, one per line. The models are loaded and warmed up
first; then one JSON object per input line is printed to stdout (flushed each time):

  crops: {"path": P, "text": T, "confidence": C, "recognizer": "tiny"|"small", "ms": M}
         (the whole image is one text crop; ms = time to recognise it, batch size 1,
          preprocessing included, cascade re-run included)
  e2e:   {"path": P, "ms": M, "items": [{"box": [[x,y]*4], "text": T,
          "confidence": C, "recognizer": R}, ...]}
         (ms = detection + cropping + recognition)
  error: {"path": P, "error": "..."}

ms never includes reading or decoding the image file.

Recognition: BGR crop resized to height 48 keeping its aspect ratio, normalised to
[-1, 1], right-padded with 0 to the batch width W = max(320, int(48 * max ratio))
(with --width-steps, edgerun's widths instead: at least 128, in steps of ~1.25x);
CTC greedy decoding (argmax, merge repeats, drop blank 0; index i -> dictionary line
i-1; index len(dict)+1 -> space). Confidence = mean of the kept steps' max probability.
--ascii restricts the argmax to blank, printable ASCII characters and the space.
Cascade: the tiny recognizer first; results whose confidence < --threshold are
recognised again with the small recognizer.

Detection: DB (differentiable binarisation) post-processing with the PaddleOCR
defaults: probability threshold 0.3, box threshold 0.5, unclip ratio 1.6,
"fast" box score, at most 1000 candidates.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pyclipper

REC_HEIGHT = 48
REC_MIN_WIDTH = 320
# edgerun's narrowest recognizer input (rec::MIN_WIDTH in the runtime).
EDGERUN_REC_MIN_WIDTH = 128
REC_MAX_WIDTH = 3200
REC_BATCH = 6
DROP_SCORE = 0.5

DET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
DET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
DET_THRESH = 0.3
DET_BOX_THRESH = 0.5
DET_MAX_CANDIDATES = 1000
DET_UNCLIP_RATIO = 1.6
DET_MIN_SIZE = 3


def make_session(path, threads):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts,
                                providers=["CPUExecutionProvider"])


def load_dict(path):
    """One character per line; a trailing '\\r' is dropped; the final empty line
    (after the last newline) is not a character."""
    with open(path, "rb") as f:
        text = f.read().decode("utf-8")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


class Recognizer:
    """A CTC text recognizer: [N,3,48,W] -> [N,W/8,C], C = len(dict) + 2."""

    def __init__(self, name, model_path, dict_path, threads, ascii_only):
        self.name = name
        self.session = make_session(model_path, threads)
        self.input_name = self.session.get_inputs()[0].name
        chars = load_dict(dict_path)
        # index 0 = CTC blank, 1..len(dict) = dictionary, len(dict)+1 = space
        self.symbols = [""] + chars + [" "]
        self.allowed = None
        if ascii_only:
            keep = [0]
            for i, ch in enumerate(self.symbols):
                if i == 0:
                    continue
                if len(ch) == 1 and 0x20 <= ord(ch) <= 0x7E:
                    keep.append(i)
            self.allowed = np.array(sorted(set(keep)), dtype=np.int64)

    # With --width-steps the batch width is rounded up to edgerun's steps (128, 160, 224,
    # 288, ... each ~1.25x the last, multiples of 32, at most 3200), so that the benchmark
    # compares the same computation; without it, RapidOCR's exact width (at least 320).
    width_steps = False

    @classmethod
    def batch_width(cls, crops):
        min_width = EDGERUN_REC_MIN_WIDTH if cls.width_steps else REC_MIN_WIDTH
        ratio = min_width / REC_HEIGHT
        for img in crops:
            h, w = img.shape[:2]
            ratio = max(ratio, w / float(h))
        needed = max(min_width, int(REC_HEIGHT * ratio))
        if not cls.width_steps:
            return needed
        width = min_width
        while width < min(needed, REC_MAX_WIDTH):
            width = -(-(width * 5 // 4) // 32) * 32
        return min(width, REC_MAX_WIDTH)

    @staticmethod
    def prepare(img, width):
        """Resize to height 48 (aspect kept, at most `width` wide), scale to
        [-1, 1], right-pad with zeros. Returns [3,48,width] float32."""
        h, w = img.shape[:2]
        new_w = min(width, int(math.ceil(REC_HEIGHT * w / float(h))))
        new_w = max(new_w, 1)
        resized = cv2.resize(img, (new_w, REC_HEIGHT)).astype(np.float32)
        resized = resized.transpose(2, 0, 1) / 255.0
        resized = (resized - 0.5) / 0.5
        out = np.zeros((3, REC_HEIGHT, width), dtype=np.float32)
        out[:, :, :new_w] = resized
        return out

    def decode(self, probs):
        """probs: [T, C] softmax output of one crop -> (text, confidence)."""
        if self.allowed is not None:
            sub = probs[:, self.allowed]
            best = sub.argmax(axis=1)
            idx = self.allowed[best]
            score = sub[np.arange(sub.shape[0]), best]
        else:
            idx = probs.argmax(axis=1)
            score = probs[np.arange(probs.shape[0]), idx]
        text = []
        kept = []
        prev = -1
        for t in range(idx.shape[0]):
            i = int(idx[t])
            if i != prev and i != 0:
                text.append(self.symbols[i] if i < len(self.symbols) else "")
                kept.append(float(score[t]))
            prev = i
        conf = float(np.mean(kept)) if kept else 0.0
        return "".join(text), conf

    def run_batch(self, crops):
        """Recognise crops together (one batch). Returns [(text, conf)]."""
        width = self.batch_width(crops)
        x = np.stack([self.prepare(img, width) for img in crops])
        probs = self.session.run(None, {self.input_name: x})[0]
        return [self.decode(probs[k]) for k in range(len(crops))]

    def run(self, crops, batch=REC_BATCH):
        """Recognise crops in batches of `batch`, sorted by aspect ratio
        (narrow first) so that a batch pads little. Results in input order."""
        order = sorted(range(len(crops)),
                       key=lambda k: crops[k].shape[1] / float(crops[k].shape[0]))
        results = [None] * len(crops)
        for start in range(0, len(order), batch):
            chunk = order[start:start + batch]
            for k, res in zip(chunk, self.run_batch([crops[k] for k in chunk])):
                results[k] = res
        return results


class RecPipeline:
    """tiny, small, or cascade (tiny, then small where tiny is unsure)."""

    def __init__(self, models, mode, threshold, threads, ascii_only):
        self.mode = mode
        self.threshold = threshold
        self.tiny = self.small = None
        if mode in ("tiny", "cascade"):
            self.tiny = Recognizer("tiny", models / "rec_tiny.onnx",
                                   models / "dict_tiny.txt", threads, ascii_only)
        if mode in ("small", "cascade"):
            self.small = Recognizer("small", models / "rec_small.onnx",
                                    models / "dict_small.txt", threads, ascii_only)

    def run(self, crops, batch=REC_BATCH):
        """Returns [(text, confidence, recognizer name)] in input order."""
        if not crops:
            return []
        first = self.tiny if self.tiny is not None else self.small
        results = [(t, c, first.name) for t, c in first.run(crops, batch)]
        if self.mode == "cascade":
            redo = [k for k, (_, c, _) in enumerate(results) if c < self.threshold]
            if redo:
                again = self.small.run([crops[k] for k in redo], batch)
                for k, (t, c) in zip(redo, again):
                    results[k] = (t, c, self.small.name)
        return results


def order_box(points):
    """Order 4 points: top-left, top-right, bottom-right, bottom-left
    (the two leftmost points give the left side, the upper one first)."""
    pts = sorted([tuple(p) for p in points], key=lambda p: p[0])
    left = sorted(pts[:2], key=lambda p: p[1])
    right = sorted(pts[2:], key=lambda p: p[1])
    return np.array([left[0], right[0], right[1], left[1]], dtype=np.float32)


def min_area_box(points):
    rect = cv2.minAreaRect(points)
    box = order_box(cv2.boxPoints(rect))
    return box, min(rect[1])


def box_score(prob, box):
    """Mean probability inside the box polygon, evaluated on its bounding rect."""
    h, w = prob.shape
    xs, ys = box[:, 0], box[:, 1]
    x0 = int(np.clip(np.floor(xs.min()), 0, w - 1))
    x1 = int(np.clip(np.ceil(xs.max()), 0, w - 1))
    y0 = int(np.clip(np.floor(ys.min()), 0, h - 1))
    y1 = int(np.clip(np.ceil(ys.max()), 0, h - 1))
    mask = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.uint8)
    shifted = box.copy()
    shifted[:, 0] -= x0
    shifted[:, 1] -= y0
    cv2.fillPoly(mask, shifted.reshape(1, -1, 2).astype(np.int32), 1)
    return cv2.mean(prob[y0:y1 + 1, x0:x1 + 1], mask)[0]


def unclip(box):
    """Grow the polygon by area * ratio / perimeter (round joins)."""
    poly = box.reshape(-1, 1, 2).astype(np.float32)
    area = abs(cv2.contourArea(poly))
    perimeter = cv2.arcLength(poly, True)
    if perimeter <= 0:
        return None
    distance = area * DET_UNCLIP_RATIO / perimeter
    offset = pyclipper.PyclipperOffset()
    offset.AddPath([tuple(p) for p in box.tolist()], pyclipper.JT_ROUND,
                   pyclipper.ET_CLOSEDPOLYGON)
    grown = offset.Execute(distance)
    if not grown:
        return None
    grown = max(grown, key=lambda p: abs(cv2.contourArea(np.array(p, dtype=np.float32))))
    return np.array(grown, dtype=np.float32)


def sort_boxes(boxes):
    """Top-to-bottom by the first point, then left-to-right within a line
    (boxes whose tops differ by < 10 px count as the same line)."""
    boxes = sorted(boxes, key=lambda b: (b[0][1], b[0][0]))
    for i in range(len(boxes) - 1):
        for j in range(i, -1, -1):
            if abs(boxes[j + 1][0][1] - boxes[j][0][1]) < 10 and \
                    boxes[j + 1][0][0] < boxes[j][0][0]:
                boxes[j], boxes[j + 1] = boxes[j + 1], boxes[j]
            else:
                break
    return boxes


class Detector:
    def __init__(self, model_path, threads, limit):
        self.session = make_session(model_path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.limit = limit

    def input_size(self, h, w):
        ratio = 1.0
        if max(h, w) > self.limit:
            ratio = self.limit / float(max(h, w))
        # PaddleOCR truncates the scaled size before rounding it to a multiple of 32.
        rh = max(int(round(int(h * ratio) / 32.0) * 32), 32)
        rw = max(int(round(int(w * ratio) / 32.0) * 32), 32)
        return rh, rw

    def preprocess(self, img):
        h, w = img.shape[:2]
        rh, rw = self.input_size(h, w)
        resized = cv2.resize(img, (rw, rh)).astype(np.float32) / 255.0
        resized = (resized - DET_MEAN) / DET_STD
        return resized.transpose(2, 0, 1)[None].astype(np.float32)

    def detect(self, img):
        """Returns a list of 4x2 float32 boxes in image coordinates, sorted."""
        h, w = img.shape[:2]
        x = self.preprocess(img)
        prob = self.session.run(None, {self.input_name: x})[0][0, 0]
        ph, pw = prob.shape
        bitmap = (prob > DET_THRESH).astype(np.uint8) * 255
        found = cv2.findContours(bitmap, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
        contours = found[0] if len(found) == 2 else found[1]
        boxes = []
        for contour in contours[:DET_MAX_CANDIDATES]:
            box, side = min_area_box(contour)
            if side < DET_MIN_SIZE:
                continue
            if box_score(prob, box) < DET_BOX_THRESH:
                continue
            grown = unclip(box)
            if grown is None or len(grown) < 3:
                continue
            box, side = min_area_box(grown.reshape(-1, 1, 2))
            if side < DET_MIN_SIZE + 2:
                continue
            box[:, 0] = np.clip(np.round(box[:, 0] / pw * w), 0, w)
            box[:, 1] = np.clip(np.round(box[:, 1] / ph * h), 0, h)
            # final ordering and clipping to the pixel grid
            box = order_box(box)
            box[:, 0] = np.clip(box[:, 0], 0, w - 1)
            box[:, 1] = np.clip(box[:, 1], 0, h - 1)
            bw = int(np.linalg.norm(box[0] - box[1]))
            bh = int(np.linalg.norm(box[0] - box[3]))
            if bw <= 3 or bh <= 3:
                continue
            boxes.append(box)
        return sort_boxes(boxes)


def crop_box(img, box):
    """Perspective-rectify the quadrilateral (tl, tr, br, bl) into an upright crop."""
    box = box.astype(np.float32)
    cw = int(max(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[2] - box[3])))
    ch = int(max(np.linalg.norm(box[0] - box[3]), np.linalg.norm(box[1] - box[2])))
    cw, ch = max(cw, 1), max(ch, 1)
    dst = np.array([[0, 0], [cw, 0], [cw, ch], [0, ch]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(box, dst)
    crop = cv2.warpPerspective(img, m, (cw, ch), flags=cv2.INTER_CUBIC,
                               borderMode=cv2.BORDER_REPLICATE)
    if crop.shape[0] / float(crop.shape[1]) >= 1.5:
        crop = np.rot90(crop)
    return np.ascontiguousarray(crop)


def e2e(detector, rec, img, batch=REC_BATCH, min_confidence=DROP_SCORE):
    boxes = detector.detect(img)
    crops = [crop_box(img, b) for b in boxes]
    results = rec.run(crops, batch)
    items = []
    for box, (text, conf, name) in zip(boxes, results):
        # PaddleOCR's drop_score: readings below it are not reported.
        if not text or conf < min_confidence:
            continue
        items.append({"box": [[int(round(float(x))), int(round(float(y)))] for x, y in box],
                      "text": text, "confidence": conf, "recognizer": name})
    return items


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="models/ocr", type=Path)
    ap.add_argument("--mode", choices=["crops", "e2e"], default="crops")
    ap.add_argument("--rec", choices=["tiny", "small", "cascade"], default="cascade")
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--limit", type=int, default=960)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ascii", action="store_true")
    ap.add_argument("--batch", type=int, default=REC_BATCH,
                    help="crops per recognizer run end to end (RapidOCR: 6)")
    ap.add_argument("--width-steps", action="store_true",
                    help="pad recognizer inputs to edgerun's width steps (from 128)")
    ap.add_argument("--min-confidence", type=float, default=DROP_SCORE,
                    help="end to end, drop readings below this confidence")
    args = ap.parse_args()
    Recognizer.width_steps = args.width_steps

    # JSON lines are UTF-8 whatever the caller's locale is.
    sys.stdin.reconfigure(encoding="utf-8")
    sys.stdout.reconfigure(encoding="utf-8")
    cv2.setNumThreads(1)
    rec = RecPipeline(args.models, args.rec, args.threshold, args.threads, args.ascii)
    detector = None
    if args.mode == "e2e":
        detector = Detector(args.models / "det_tiny.onnx", args.threads, args.limit)

    # Warm-up: one run of every loaded model.
    dummy = np.full((48, 160, 3), 255, dtype=np.uint8)
    cv2.putText(dummy, "warm", (5, 36), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (0, 0, 0), 2)
    for r in (rec.tiny, rec.small):
        if r is not None:
            r.run([dummy], batch=1)
    if detector is not None:
        page = np.full((320, 480, 3), 255, dtype=np.uint8)
        page[100:148, 100:260] = dummy
        e2e(detector, rec, page)

    out = sys.stdout
    for line in sys.stdin:
        path = line.strip()
        if not path:
            continue
        try:
            img = cv2.imread(path, cv2.IMREAD_COLOR)
        except Exception as e:  # cv2 may raise on odd inputs
            img, err = None, str(e)
        else:
            err = "cannot read image"
        if img is None or img.size == 0:
            out.write(json.dumps({"path": path, "error": err}) + "\n")
            out.flush()
            continue
        try:
            if args.mode == "crops":
                t0 = time.perf_counter()
                text, conf, name = rec.run([img], batch=1)[0]
                ms = (time.perf_counter() - t0) * 1000.0
                obj = {"path": path, "text": text, "confidence": conf,
                       "recognizer": name, "ms": round(ms, 3)}
            else:
                t0 = time.perf_counter()
                items = e2e(detector, rec, img, args.batch, args.min_confidence)
                ms = (time.perf_counter() - t0) * 1000.0
                obj = {"path": path, "ms": round(ms, 3), "items": items}
        except Exception as e:
            obj = {"path": path, "error": "%s: %s" % (type(e).__name__, e)}
        out.write(json.dumps(obj, ensure_ascii=False) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
