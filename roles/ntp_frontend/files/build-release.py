#!/usr/bin/env python3
"""Build (or reuse) the pyresponder wheel for one release, on the control node.

The release id is VERSION-HASH, HASH covering the files that go into the wheel, so identical
sources give the same id (and an unchanged tree never triggers a rollout). Prints one JSON object:
{"release": ID, "wheel": PATH, "built": BOOL}.
usage: build-release.py SOURCE_DIR BUILD_DIR [PREBUILT_WHEEL]
"""

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path


def tree_hash(src: Path) -> str:
    h = hashlib.sha256()
    files = [src / "pyproject.toml"]
    files += [
        p
        for p in (src / "src").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p)
    ]
    for p in sorted(files):
        h.update(str(p.relative_to(src)).encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def main() -> int:
    src, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    prebuilt = sys.argv[3] if len(sys.argv) > 3 else ""
    if prebuilt:
        wheel = Path(prebuilt).resolve()
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()[:12]
        version = wheel.name.split("-")[1]
        print(json.dumps({"release": f"{version}-{digest}", "wheel": str(wheel), "built": False}))
        return 0
    version = tomllib.loads((src / "pyproject.toml").read_text())["project"]["version"]
    release = f"{version}-{tree_hash(src)}"
    dest = out / release
    wheels = sorted(dest.glob("pyresponder-*.whl")) if dest.is_dir() else []
    built = False
    if not wheels:
        dest.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dest)]
        # Build offline with this Python's setuptools and wheel when it has them.
        if importlib.util.find_spec("setuptools") and importlib.util.find_spec("wheel"):
            cmd.append("--no-build-isolation")
        env = dict(os.environ, SOURCE_DATE_EPOCH="315532800", PIP_DISABLE_PIP_VERSION_CHECK="1")
        subprocess.run([*cmd, str(src)], check=True, env=env, stdout=sys.stderr)
        wheels = sorted(dest.glob("pyresponder-*.whl"))
        built = True
    if len(wheels) != 1:
        print(f"build-release: expected one wheel in {dest}, found {len(wheels)}", file=sys.stderr)
        return 1
    print(json.dumps({"release": release, "wheel": str(wheels[0]), "built": built}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
