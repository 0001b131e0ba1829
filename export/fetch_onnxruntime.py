#!/usr/bin/env python3
"""Fetch the ONNX Runtime shared library that edgerun's `ort` backend loads at run time.

The library comes out of the official PyPI wheel `onnxruntime==1.32.0` (MIT license), which
ships `onnxruntime/capi/libonnxruntime.so.1.32.0` for x86_64 and aarch64 Linux. The wheels'
sha256 are pinned below, so CI and every developer get the same bytes.

    python export/fetch_onnxruntime.py --arch x86_64 --dest ../ort
    ORT_DYLIB_PATH=$PWD/../ort/x86_64/libonnxruntime.so.1.32.0 cargo test --release --features ort

These are CPU-only builds. On a Jetson use JetPack's onnxruntime-gpu library instead (README).
"""

import argparse
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

VERSION = "1.32.0"
LIBRARY = f"libonnxruntime.so.{VERSION}"
# Wheels for CPython 3.11 (the tag only matters to pip; the C library inside is the same).
WHEELS = {
    "x86_64": (
        "manylinux_2_28_x86_64",
        "5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d",
    ),
    "aarch64": (
        "manylinux_2_28_aarch64",
        "2303372a85299b6757b0e11e1cbf13e410ddf7e10c37f4b37e99d1c90e7daf7c",
    ),
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(arch: str, dest: Path) -> Path:
    target = dest / arch / LIBRARY
    if target.is_file():
        return target
    platform, expected = WHEELS[arch]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", f"onnxruntime=={VERSION}",
             "--no-deps", "--only-binary=:all:", "--platform", platform,
             "--python-version", "3.11", "-d", tmp],
            check=True,
        )
        (wheel,) = Path(tmp).glob("onnxruntime-*.whl")
        actual = sha256(wheel)
        if actual != expected:
            sys.exit(f"{wheel.name}: sha256 {actual} is not the pinned {expected}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as archive:
            partial = target.with_suffix(".partial")
            partial.write_bytes(archive.read(f"onnxruntime/capi/{LIBRARY}"))
            partial.rename(target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=sorted(WHEELS) + ["all"], default="all")
    parser.add_argument("--dest", type=Path, default=Path("../ort"))
    args = parser.parse_args()
    arches = sorted(WHEELS) if args.arch == "all" else [args.arch]
    for arch in arches:
        print(fetch(arch, args.dest).resolve())


if __name__ == "__main__":
    main()
