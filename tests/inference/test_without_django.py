"""The library stands alone: every module of ``inference`` imports in a Python where Django and
the project's apps cannot be imported at all (a finder refuses them), with no settings."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO

PROBE = r"""
import importlib, pkgutil, sys

BLOCKED = ("django", "rest_framework", "celery", "labs", "scans", "review", "segmentation", "frontend")
BLOCKED += ("labseg",)

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} imported by the library")
        return None

sys.meta_path.insert(0, Refuse())
import inference

found = pkgutil.walk_packages(inference.__path__, "inference.")
names = [m.name for m in found if not m.name.endswith("__main__")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""


def test_every_library_module_imports_without_django_or_an_app() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.split()[-1]) > 40  # pipeline, metrics, phantom, training, registry ...
