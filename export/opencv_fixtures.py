#!/usr/bin/env python3
"""Write tests/fixtures/opencv/: random images, OpenCV's INTER_LINEAR resizes of them and
INTER_CUBIC perspective crops of quadrilaterals in them.

`edgerun::imaging::resize_bilinear` and `warp_perspective_cubic` promise OpenCV's results
bit for bit (PP-OCR's Python pipeline resizes and crops with cv2); the tests
`imaging::tests::{bilinear,perspective_crops}_are_bit_exact_with_opencv` compare against
these files. Run with the pinned tools of export/requirements.txt:

    python export/opencv_fixtures.py
"""
import json
from pathlib import Path

import cv2
import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "opencv"

# (source width, height) -> [(target width, height)]: shrinking, enlarging, mixed, an
# exact halving (OpenCV switches to area averaging there), and recognizer-like crops.
CASES = {
    (57, 100): [(27, 48), (320, 48), (28, 50)],
    (7, 5): [(320, 48)],
    (211, 17): [(597, 48), (96, 8)],
    (120, 80): [(17, 33), (60, 40)],
}


def main():
    cv2.setNumThreads(1)
    rng = np.random.default_rng(7)
    OUT.mkdir(parents=True, exist_ok=True)
    for (w, h), targets in CASES.items():
        src = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        # PNGs hold RGB as written; cv2 writes BGR, so swap to keep the files RGB.
        cv2.imwrite(str(OUT / f"src_{w}x{h}.png"), src[:, :, ::-1])
        for tw, th in targets:
            out = cv2.resize(src, (tw, th), interpolation=cv2.INTER_LINEAR)
            cv2.imwrite(str(OUT / f"cv2_{w}x{h}_to_{tw}x{th}.png"), out[:, :, ::-1])
    write_crops(rng)
    print(f"wrote {OUT}")


# Text-box-like quadrilaterals (tl, tr, br, bl) in a 120x80 image: upright, rotated both
# ways, slanted, one running off the border (replicated pixels), one tall.
QUADS = [
    [[10, 12], [70, 12], [70, 30], [10, 30]],
    [[5, 40], [96, 21], [101, 43], [10, 62]],
    [[30, 3], [111, 19], [107, 37], [26, 21]],
    [[60, 50], [118, 55], [115, 79], [57, 74]],
    [[0, 0], [40, 2], [39, 15], [0, 13]],
    [[85, 5], [100, 6], [98, 70], [83, 69]],
]


def crop(img, quad):
    """PP-OCR's perspective crop (export/reference_ocr.py's crop_box, without rotating)."""
    box = np.array(quad, dtype=np.float32)
    cw = int(max(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[2] - box[3])))
    ch = int(max(np.linalg.norm(box[0] - box[3]), np.linalg.norm(box[1] - box[2])))
    dst = np.array([[0, 0], [cw, 0], [cw, ch], [0, ch]], dtype=np.float32)
    m = cv2.getPerspectiveTransform(box, dst)
    return cv2.warpPerspective(img, m, (cw, ch), flags=cv2.INTER_CUBIC,
                               borderMode=cv2.BORDER_REPLICATE)


def write_crops(rng):
    # Smooth content (a blurred random field) so the cubic kernel's rounding is exercised
    # on realistic gradients as well as on the raw noise of the resize sources.
    src = cv2.GaussianBlur(rng.integers(0, 256, (80, 120, 3), dtype=np.uint8), (5, 5), 1.5)
    cv2.imwrite(str(OUT / "warp_src.png"), src[:, :, ::-1])
    for i, quad in enumerate(QUADS):
        cv2.imwrite(str(OUT / f"warp_{i}.png"), crop(src, quad)[:, :, ::-1])
    (OUT / "warp_quads.json").write_text(json.dumps(QUADS) + "\n")


if __name__ == "__main__":
    main()
