#!/usr/bin/env python3
"""Write tests/fixtures/resize/: random images and OpenCV's INTER_LINEAR resizes of them.

`edgerun::imaging::resize_bilinear` promises OpenCV's result bit for bit (PP-OCR's Python
pipeline resizes with cv2); the test `imaging::tests::bilinear_is_bit_exact_with_opencv`
compares against these files. Run with the pinned tools of export/requirements.txt:

    python export/resize_fixture.py
"""
from pathlib import Path

import cv2
import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "resize"

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
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
