"""Install a plug-in package of this folder into a directory the way pip lays it out, without a build backend.

``install(package_dir, target)`` copies the package's modules to ``target`` and writes the
``NAME-VERSION.dist-info`` (``METADATA``, ``entry_points.txt``, ``top_level.txt``) from its ``pyproject.toml``,
so that ``importlib.metadata.entry_points`` finds the entry points once ``target`` is on ``sys.path``, exactly as
for a package installed with ``pip install --target``. Used by the tests (no network, no wheel needed).
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE / "theratwin-example-plugin"
BROKEN = HERE / "theratwin-broken-plugin"


def install(package_dir: Path, target: Path) -> Path:
    """Install ``package_dir`` (a folder with a pyproject.toml) into ``target``; returns its dist-info folder."""
    project_file = tomllib.loads((package_dir / "pyproject.toml").read_text(encoding="utf-8"))
    project = project_file["project"]
    packages = project_file["tool"]["setuptools"]["packages"]
    target.mkdir(parents=True, exist_ok=True)
    for package in packages:
        shutil.copytree(package_dir / package, target / package, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__"))
    name = re.sub(r"[-_.]+", "_", project["name"])
    dist_info = target / f"{name}-{project['version']}.dist-info"
    dist_info.mkdir(exist_ok=True)
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n", encoding="utf-8")
    groups = project.get("entry-points", {})
    (dist_info / "entry_points.txt").write_text(
        "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()) + "\n"
                for group, entries in groups.items()), encoding="utf-8")
    (dist_info / "top_level.txt").write_text("".join(f"{p}\n" for p in packages), encoding="utf-8")
    return dist_info
