#!/usr/bin/env python3
"""Render the OCR test fixtures with known text (deterministic, no randomness).

  tests/fixtures/sign.png       640x360 "sign": light background, three lines of
                                dark capitals at distinct positions (end-to-end test)
  tests/fixtures/sign_word.png  a single-word crop, 200x48 (recognition test)

With --scenes DIR it writes, instead, two profiling scenes into DIR (shipped in
models/ocr/, listed in its manifest by export/ocr.py):

  scene_1.png, scene_2.png      1280x720 "street signage": 13 words each in 7 lines,
                                22-70 px, dark ink on light sign panels over a grey
                                gradient, one panel with light ink on dark; the
                                runtime measures its OCR operating points on them
                                on the device, without any benchmark data

The font is Pillow's built-in scalable font (`ImageFont.load_default(size=...)`,
Aileron Regular, bundled inside Pillow >= 10.1 and rendered with FreeType), so
no system font package is needed. No stroke is added: with a 1 px stroke the
tiny recognizer reads this font's "i" as "l" ("Statlon").

Prints the expected texts and their pixel boxes (left, top, right, bottom of
the ink) as JSON, in reading order (top to bottom, left to right).

Usage: python export/render_sign.py [--out tests/fixtures]
       python export/render_sign.py --scenes models/ocr
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


SCENE_SIZE = (1280, 720)
# Background: a vertical gradient between two mid greys (constant along each row, so
# the PNG stays small).
SCENE_SKY = (164, 166, 170)
SCENE_GROUND = (108, 110, 116)
PANEL_EDGE = 3
SCENE_MARGIN = 12  # least gap between a line's ink and its panel's edge
# Each scene: posts (flat grey bars under the signs, no text), then panels:
# (panel box, fill, edge colour, [(text, font size, (x, y) of the ink's top-left, ink)]).
DARK_INK = (24, 28, 40)
LIGHT_INK = (244, 242, 232)
SCENES = [
    {
        "file": "scene_1.png",
        "posts": [(280, 230, 296, 720), (842, 300, 858, 720), (1012, 520, 1026, 720)],
        "panels": [
            ((60, 50, 520, 230), (240, 238, 226), (70, 74, 84), [
                ("PHARMACY", 70, (90, 75), DARK_INK),
                ("OPEN 7 DAYS", 36, (100, 165), DARK_INK),
            ]),
            ((700, 80, 990, 300), (236, 226, 204), (92, 70, 52), [
                ("Coffee", 56, (740, 110), (60, 36, 24)),
                ("Tea and Cake", 30, (740, 210), (60, 36, 24)),
            ]),
            ((380, 360, 760, 480), (132, 28, 34), (60, 14, 18), [
                ("SALE 50%", 64, (426, 396), LIGHT_INK),
            ]),
            ((860, 420, 1180, 520), (246, 246, 246), (150, 24, 30), [
                ("NO PARKING", 40, (900, 452), (150, 24, 30)),
            ]),
            ((120, 540, 300, 610), (226, 232, 238), (70, 80, 96), [
                ("Books", 24, (176, 562), DARK_INK),
            ]),
        ],
    },
    {
        "file": "scene_2.png",
        "posts": [(238, 170, 254, 720), (944, 160, 958, 720), (578, 630, 592, 720)],
        "panels": [
            ((80, 60, 420, 170), (232, 236, 240), (40, 52, 80), [
                ("Platform 3", 60, (110, 88), DARK_INK),
            ]),
            ((820, 60, 1080, 160), (22, 96, 56), (10, 48, 28), [
                ("EXIT 12", 48, (866, 92), LIGHT_INK),
            ]),
            ((560, 250, 900, 330), (248, 232, 150), (90, 80, 30), [
                ("Trains to City", 34, (590, 274), DARK_INK),
            ]),
            ((100, 330, 440, 450), (236, 240, 236), (50, 60, 56), [
                ("TICKETS", 66, (138, 360), DARK_INK),
            ]),
            ((840, 420, 1120, 570), (240, 240, 232), (60, 60, 70), [
                ("Bus Stop 14", 28, (880, 450), DARK_INK),
                ("Taxi", 38, (880, 508), DARK_INK),
            ]),
            ((520, 560, 660, 630), (230, 236, 244), (40, 60, 100), [
                ("Toilets", 22, (556, 583), (30, 44, 90)),
            ]),
        ],
    },
]


def inside(inner, outer, margin=0):
    return (inner[0] >= outer[0] + margin and inner[1] >= outer[1] + margin
            and inner[2] <= outer[2] - margin and inner[3] <= outer[3] - margin)


def overlap(a, b):
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def render_scene(scene):
    """One profiling scene; returns the image and its lines (text and ink box) in
    reading order. Exits if a line's ink leaves its panel or panels overlap."""
    w, h = SCENE_SIZE
    img = Image.new("RGB", SCENE_SIZE)
    draw = ImageDraw.Draw(img)
    for y in range(h):
        t = y / (h - 1)
        draw.line([(0, y), (w - 1, y)], fill=tuple(
            round(a + (b - a) * t) for a, b in zip(SCENE_SKY, SCENE_GROUND)))
    for post in scene["posts"]:
        draw.rectangle([post[0], post[1], post[2] - 1, post[3] - 1], fill=(84, 86, 92))
    panels = [p[0] for p in scene["panels"]]
    for i, a in enumerate(panels):
        if not inside(a, (0, 0, w, h)) or any(overlap(a, b) for b in panels[i + 1:]):
            raise SystemExit("%s: panel %s leaves the image or overlaps" % (scene["file"], a))
    lines = []
    for box, fill, edge, texts in scene["panels"]:
        draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], fill=fill, outline=edge,
                       width=PANEL_EDGE)
        for text, size, xy, ink in texts:
            ink_box = draw_text(draw, xy, text, size, ink)
            if not inside(ink_box, box, PANEL_EDGE + SCENE_MARGIN):
                raise SystemExit("%s: line %r leaves its panel: %s" % (scene["file"], text, ink_box))
            lines.append({"text": text, "box": ink_box})
    lines.sort(key=lambda l: (l["box"][1], l["box"][0]))
    return img, lines


def render_scenes(out):
    out.mkdir(parents=True, exist_ok=True)
    for scene in SCENES:
        img, lines = render_scene(scene)
        img.save(out / scene["file"], optimize=True)
        for line in lines:
            print(json.dumps({"file": scene["file"], **line}))


def main():
    ap = argparse.ArgumentParser(description="render OCR test fixtures")
    ap.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures")
    ap.add_argument("--scenes", type=Path, metavar="DIR",
                    help="write only the profiling scenes scene_1.png, scene_2.png into DIR")
    args = ap.parse_args()
    if args.scenes:
        render_scenes(args.scenes)
        return
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
