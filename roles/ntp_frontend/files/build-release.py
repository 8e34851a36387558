#!/usr/bin/env python3
"""Build (or reuse) one release on the control node: the pyresponder wheel and its dependencies.

The release folder BUILD_DIR/ID holds the pyresponder wheel and every wheel it needs with the
extras asked for (`pyresponder[metrics]` -> prometheus_client), so the host installs it offline:
`pip install --no-index --find-links DIR 'pyresponder[metrics]'`. The id is VERSION-HASH, HASH
covering the files that go into the pyresponder wheel, the extras and the pinned requirements, so
identical inputs give the same id (an unchanged tree never triggers a rollout) and a new pin gives
a new release. The folder is reused when its manifest (release.json) is there.
Prints one JSON object:
  {"release": ID, "dir": DIR, "wheel": PATH, "wheels": [NAMES], "built": BOOL}
usage: build-release.py SOURCE_DIR BUILD_DIR PREBUILT_WHEEL EXTRAS PINS
  PREBUILT_WHEEL  "" = build from SOURCE_DIR
  EXTRAS          comma-separated extras of pyresponder to ship ("" = none)
  PINS            comma-separated pins of the dependencies (e.g. prometheus-client==0.26.0)
"""

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

MANIFEST = "release.json"


def tree_hash(src: Path, h: "hashlib._Hash") -> None:
    files = [src / "pyproject.toml"]
    files += [
        p
        for p in (src / "src").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p)
    ]
    for p in sorted(files):
        h.update(str(p.relative_to(src)).encode() + b"\0")
        h.update(p.read_bytes() + b"\0")


def pip(*args: str) -> None:
    env = dict(os.environ, SOURCE_DATE_EPOCH="315532800", PIP_DISABLE_PIP_VERSION_CHECK="1")
    cmd = [sys.executable, "-m", "pip", *args]
    subprocess.run(cmd, check=True, env=env, stdout=sys.stderr)


def main() -> int:
    if len(sys.argv) != 6:
        print(__doc__, file=sys.stderr)
        return 2
    src, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    prebuilt, extras_arg, pins_arg = sys.argv[3:6]
    extras = sorted({e.strip() for e in extras_arg.split(",") if e.strip()})
    pins = sorted({p.strip() for p in pins_arg.split(",") if p.strip()})
    h = hashlib.sha256()
    if prebuilt:
        wheel_in = Path(prebuilt).resolve()
        h.update(wheel_in.read_bytes())
        version = wheel_in.name.split("-")[1]
    else:
        version = tomllib.loads((src / "pyproject.toml").read_text())["project"]["version"]
        tree_hash(src, h)
    h.update(json.dumps({"extras": extras, "pins": pins}).encode())
    release = f"{version}-{h.hexdigest()[:12]}"
    dest = out / release
    built = False
    if not (dest / MANIFEST).is_file():
        # Build into a temporary folder next to the final one, then rename: a half-built release
        # (an interrupted run, an unreachable index) is never mistaken for a complete one.
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{release}.", dir=out))
        tmp.chmod(0o755)
        try:
            if prebuilt:
                shutil.copy2(wheel_in, tmp)
                target = str(tmp / wheel_in.name)
            else:
                args = ["wheel", "--quiet", "--no-deps", "-w", str(tmp)]
                # Build offline with this Python's setuptools and wheel when it has them.
                if importlib.util.find_spec("setuptools") and importlib.util.find_spec("wheel"):
                    args.append("--no-build-isolation")
                pip(*args, str(src))
                target = str(next(tmp.glob("pyresponder-*.whl")))
            if extras:
                # The dependencies (and theirs), as wheels only, at the pinned versions; the
                # pyresponder wheel itself is already there (--find-links) and is not rebuilt.
                cfile = tmp / "constraints.txt"
                cfile.write_text("".join(f"{p}\n" for p in pins))
                pip(
                    "download",
                    "--quiet",
                    "--only-binary=:all:",
                    "-d",
                    str(tmp),
                    "--find-links",
                    str(tmp),
                    "-c",
                    str(cfile),
                    f"pyresponder[{','.join(extras)}] @ file://{target}",
                )
                cfile.unlink()
            wheels = sorted(p.name for p in tmp.glob("*.whl"))
            (tmp / MANIFEST).write_text(json.dumps({"release": release, "wheels": wheels}) + "\n")
            if dest.exists():
                shutil.rmtree(dest)
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        built = True
    manifest = json.loads((dest / MANIFEST).read_text())
    mains = [w for w in manifest["wheels"] if w.startswith("pyresponder-")]
    if len(mains) != 1:
        print(
            f"build-release: expected one pyresponder wheel in {dest}, found {mains}",
            file=sys.stderr,
        )
        return 1
    print(
        json.dumps(
            {
                "release": release,
                "dir": str(dest),
                "wheel": str(dest / mains[0]),
                "wheels": manifest["wheels"],
                "built": built,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
