"""Finish a virtual environment for an image: drop bundled test suites and unused parts, then
compile bytecode.

The scientific packages ship their own test suites (about 120 MB, onnx's backend test data
among them) that nothing imports at run time, and pyarrow its Arrow Flight RPC libraries and C++
headers (about 40 MB) that bitloop never loads. Bytecode is compiled once, in unchecked-hash mode:
valid whatever the file times in the layers, and identical from build to build.
"""

import compileall
import py_compile
import shutil
import sys
from pathlib import Path

TESTED_PACKAGES = ("numpy", "scipy", "pandas", "sklearn", "pyarrow", "matplotlib")
TEST_DATA = ("onnx/backend/test",)
UNUSED = ("pyarrow/include", "pyarrow/src", "pyarrow/*flight*")


def main(venv: Path) -> None:
    site_packages = next((venv / "lib").glob("python3.*/site-packages"))
    for package in TESTED_PACKAGES:
        for tests in sorted((site_packages / package).rglob("tests")):
            if tests.is_dir():  # a parent removed earlier takes its nested suites with it
                shutil.rmtree(tests)
    for data in TEST_DATA:
        shutil.rmtree(site_packages / data, ignore_errors=True)
    for pattern in UNUSED:
        for path in site_packages.glob(pattern):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    # Some packages ship files that are not Python 3; compileall reports and skips them (quiet=2).
    compileall.compile_dir(
        venv / "lib", quiet=2, workers=0, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
