#!/usr/bin/env python3
"""Render the OCR test fixtures with known text (deterministic, no randomness).

  tests/fixtures/sign.png       640x360 "sign": light background, three lines of
                                dark capitals at distinct positions (end-to-end test)
  tests/fixtures/sign_word.png  a single-word crop, 200x48 (recognition test)

The font is Pillow's built-in scalable font (`ImageFont.load_default(size=...)`,
Aileron Regular, bundled inside Pillow >= 10.1 and rendered with FreeType), so
no system font package is needed. No stroke is added: with a 1 px stroke the
tiny recognizer reads this font's "i" as "l" ("Statlon").

Prints the expected texts and their pixel boxes (left, top, right, bottom of
the ink) as JSON, in reading order (top to bottom, left to right).

Usage: python export/render_sign.py [--out tests/fixtures]
"""
import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent

SIGN_SIZE = (640, 360)
SIGN_BACKGROUND = (236, 240, 232)
SIGN_INK = (28, 32, 48)
# (text, font size, (x, y) of the ink's top-left corner), in reading order
SIGN_LINES = [
    ("EDGE RUNTIME", 56, (40, 40)),
    ("OPEN 24 HOURS", 48, (150, 160)),
    ("EXIT 42", 64, (360, 262)),
]

WORD_SIZE = (200, 48)
WORD_BACKGROUND = (248, 248, 244)
WORD_INK = (20, 20, 28)
WORD_TEXT = "Station"
WORD_FONT_SIZE = 36

STROKE = 0


def font(size):
    f = ImageFont.load_default(size=size)
    if not isinstance(f, ImageFont.FreeTypeFont):
        raise SystemExit("Pillow without FreeType: load_default(size=...) is not scalable")
    return f


def draw_text(draw, xy, text, size, ink):
    """Draw text so that its ink box starts at xy; return the ink box."""
    f = font(size)
    l, t, r, b = draw.textbbox((0, 0), text, font=f, stroke_width=STROKE)
    x, y = xy[0] - l, xy[1] - t
    draw.text((x, y), text, font=f, fill=ink, stroke_width=STROKE, stroke_fill=ink)
    return [x + l, y + t, x + r, y + b]


def render_sign():
    img = Image.new("RGB", SIGN_SIZE, SIGN_BACKGROUND)
    draw = ImageDraw.Draw(img)
    lines = []
    for text, size, xy in SIGN_LINES:
        box = draw_text(draw, xy, text, size, SIGN_INK)
        if box[2] > SIGN_SIZE[0] or box[3] > SIGN_SIZE[1]:
            raise SystemExit("line %r does not fit: %s" % (text, box))
        lines.append({"text": text, "box": box})
    return img, lines


def render_word():
    img = Image.new("RGB", WORD_SIZE, WORD_BACKGROUND)
    draw = ImageDraw.Draw(img)
    f = font(WORD_FONT_SIZE)
    l, t, r, b = draw.textbbox((0, 0), WORD_TEXT, font=f, stroke_width=STROKE)
    # centred
    x = (WORD_SIZE[0] - (r - l)) // 2 - l
    y = (WORD_SIZE[1] - (b - t)) // 2 - t
    draw.text((x, y), WORD_TEXT, font=f, fill=WORD_INK, stroke_width=STROKE,
              stroke_fill=WORD_INK)
    return img, {"text": WORD_TEXT, "box": [x + l, y + t, x + r, y + b]}


def main():
    ap = argparse.ArgumentParser(description="render OCR test fixtures")
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    sign, lines = render_sign()
    sign.save(args.out / "sign.png", optimize=True)
    word, word_info = render_word()
    word.save(args.out / "sign_word.png", optimize=True)

    for line in lines:
        print(json.dumps({"file": "sign.png", **line}))
    print(json.dumps({"file": "sign_word.png", **word_info}))


if __name__ == "__main__":
    main()
