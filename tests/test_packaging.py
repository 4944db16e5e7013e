"""The wheel is what users install: build it and import every subpackage from it alone (an
unlisted subpackage passes in editable mode and is missing from the wheel)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOP_LEVEL = ("engine", "partition", "spmd", "cluster")
# Every folder with an __init__.py under the top-level packages, found on disk: a subpackage
# pyproject.toml forgets to list fails here, not only in users' installs.
SUBPACKAGES = sorted(
    "dask_datalog." + ".".join(init.parent.relative_to(ROOT).parts)
    for top in TOP_LEVEL
    for init in (ROOT / top).rglob("__init__.py")
)


def test_wheel_contains_and_imports_every_subpackage(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("dask_datalog-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for package in SUBPACKAGES:
        assert f"{package.replace('.', '/')}/__init__.py" in names, package
    assert "dask_datalog/engine/frontend/grammar.lark" in names
    for page in ("index.html", "job.html", "app.js", "style.css"):  # the job service's web page
        assert f"dask_datalog/cluster/service/static/{page}" in names, page
    assert not any(n.startswith(("engine/", "tests/", "dask_datalog/__init__")) for n in names)

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    probe = (
        "import importlib, sys\n"
        f"mods = {SUBPACKAGES!r} + ['dask_datalog.engine.storage.cpu_kernels', 'dask_datalog.cluster.cli.main']\n"
        "for m in mods:\n"
        "    mod = importlib.import_module(m)\n"
        f"    assert mod.__file__.startswith({str(target)!r}), (m, mod.__file__)\n"
        "from dask_datalog.cluster import Program\n"
        "r = Program('.decl e(x:number)\\ne(1).\\n.decl p(x:number)\\np(x) :- e(x).').run(backend='numpy')\n"
        "assert r.sizes['p'] == 1\n"
    )
    # Run from an empty folder with only the wheel's files first on the path, so neither
    # the source tree nor the editable install can stand in for a missing file.
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONNOUSERSITE": "1"}
    subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(target)!r})\n{probe}"],
        check=True,
        cwd=tmp_path,
        env=env,
    )
