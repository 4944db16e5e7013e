"""deploy/docker/Dockerfile is not built here (no container runtime or registry to rely on), so
its install step is: deploy/docker/install.sh, run as the Dockerfile's RUN line runs it, on
exactly the files its COPY lines put in the image, into a fresh virtual environment; then the
commands the pods run work there. The gpu extra's CUDA wheels (hundreds of MB, useless without
a GPU) are left out with DASK_DATALOG_EXTRAS="": the same steps otherwise."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"


def build_stage() -> list[list[str]]:
    """The build stage's instructions as words, line continuations joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [shlex.split(line) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    froms = [i for i, words in enumerate(lines) if words[0] == "FROM"]
    return lines[froms[0] : froms[1]]


def copy_into(image_root: Path, words: list[str]) -> None:
    """``COPY SRC... DEST`` from the repository into ``image_root``, as Docker does: a
    directory's contents, a file into DEST/ or as DEST; without the local build outputs that a
    fresh checkout would not have."""
    *sources, dest = words[1:]
    assert not any(s.startswith("--") for s in sources), f"this test does not know {words}"
    target = image_root / dest.lstrip("/")
    for source in sources:
        path = ROOT / source
        if path.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info", "build")
            shutil.copytree(path, target, ignore=ignore, dirs_exist_ok=True)
        elif dest.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target / path.name)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)


# About 20 s on the 2-core development machine with pip's cache warm (pip, the dependencies,
# the C kernels' build), a few minutes with a cold cache; PyPI must be reachable.
@pytest.mark.install
def test_dockerfile_install_step_in_a_fresh_venv(tmp_path: Path) -> None:
    image_root = tmp_path / "image"
    stage = build_stage()
    for words in stage:
        if words[0] == "COPY":
            copy_into(image_root, words)
    (run,) = [words for words in stage if words[0] == "RUN" and any(w.endswith("install.sh") for w in words)]
    at = next(i for i, w in enumerate(run) if w.endswith("install.sh"))
    script, source, venv = run[at : at + 3]
    assert run[at - 1] == "sh" and venv == "/opt/dask-datalog", run

    venv_dir = tmp_path / "venv"
    subprocess.run(
        ["sh", str(image_root / script.lstrip("/")), str(image_root / source.lstrip("/")), str(venv_dir)],
        env={**_base_env(), "DASK_DATALOG_EXTRAS": "", "PYTHON": sys.executable},
        check=True,
        timeout=1200,
    )

    # Run from an empty folder with the new environment's own commands, so the checkout's
    # editable install cannot stand in for a file the image lacks.
    facts = tmp_path / "facts"
    facts.mkdir()
    shutil.copy(ROOT / "tests" / "data" / "tiny" / "data_5.txt", facts / "edge.facts")
    command = [str(venv_dir / "bin" / "dask-datalog"), "run", str(ROOT / "examples" / "reach.dl")]
    command += ["-F", str(facts), "-D", str(tmp_path / "out"), "--no-cluster", "--quiet"]
    done = subprocess.run(command, cwd=tmp_path, env=_base_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["path", "9"]
    expected = (ROOT / "tests" / "data" / "tiny" / "data_5_TC.txt").read_text().split("\n")
    assert sorted((tmp_path / "out" / "path.csv").read_text().splitlines()) == sorted(expected)
    probe = "import dask_datalog.cluster as m; print(m.__file__)"
    python = str(venv_dir / "bin" / "python")
    located = subprocess.run([python, "-c", probe], cwd=tmp_path, env=_base_env(), capture_output=True, text=True)
    assert Path(located.stdout.strip()).is_relative_to(venv_dir), located.stderr


def _base_env() -> dict[str, str]:
    """This environment without the test venv's own: the new venv must stand alone."""
    drop = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}
    return {k: v for k, v in os.environ.items() if k not in drop}
