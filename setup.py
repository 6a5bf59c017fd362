"""Build hook (the metadata is in pyproject.toml): the wheel carries the
project's firmware and the templates `esp32emu new` copies.

`firmware/` at the repository root stays the only copy in the repository
(it is what `esp32emu flash` deploys); building a wheel -- from the
checkout or from an sdist, whose MANIFEST.in includes these folders --
copies it into the package as `emulator/_firmware/`, and `examples/tests/`
and `examples/ci/` as `emulator/_templates/`. An editable install copies
nothing: the package reads the checkout's folders (emulator/firmware/folder.py).
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# repository folder -> (package folder, files); keep in step with emulator.firmware.folder.BUNDLED
BUNDLED = {
    "firmware": ("emulator/_firmware", "*.py"),
    "examples/tests": ("emulator/_templates/tests", "*.py"),
    "examples/ci": ("emulator/_templates/ci", "*.yml"),
}


class BuildPyBundling(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for src, (dest, pattern) in BUNDLED.items():
            files = sorted((ROOT / src).glob(pattern))
            if not files:
                raise SystemExit(f"setup.py: nothing matches {src}/{pattern}: the wheel would ship without it")
            out = Path(self.build_lib) / dest
            self.mkpath(str(out))
            for f in files:
                self.copy_file(str(f), str(out / f.name))


setup(cmdclass={"build_py": BuildPyBundling})
