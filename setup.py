"""Build hook: compile the XDP program into the wheel when clang is there.

All metadata lives in pyproject.toml. Without clang (or if the compile fails) the package builds
and installs as before; only ``pyresponder xdp`` then stops with one line saying the object is
missing. scripts/build-bpf does the same for a development tree.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE = Path("src/pyresponder/bpf/xdp_ntp.c")


class BuildPyWithBpf(build_py):
    def run(self) -> None:
        super().run()
        clang = shutil.which("clang")
        target = Path(self.build_lib) / "pyresponder" / "bpf" / "xdp_ntp.o"
        if clang is None:
            print("setup.py: clang not found, the XDP program is not built", file=sys.stderr)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        include = f"/usr/include/{os.uname().machine}-linux-gnu"
        command = [clang, "-O2", "-g", "-Wall", "-target", "bpf", f"-I{include}", "-c",
                   str(SOURCE), "-o", str(target)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            print(f"setup.py: the XDP program did not compile:\n{result.stderr}", file=sys.stderr)


setup(cmdclass={"build_py": BuildPyWithBpf})
