"""The walltime path of deploy/slurm/run-single-node.sbatch: SIGTERM to the batch shell (what
`#SBATCH --signal=B:TERM@120` sends) reaches the run, which checkpoints and exits 75; the
script requeues its job (`scontrol requeue`); the requeued script resumes from the checkpoint
and writes the same outputs as an undisturbed run, then removes the checkpoint.

`srun` and `scontrol` are stand-ins here (srun runs the command, scontrol records what it was
asked): the script's own logic is what is tested. The issue on HPC batch runs runs these
scripts under a real SLURM.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from test_worker_loss import REACH, chain, cli

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "deploy" / "slurm" / "run-single-node.sbatch"


def test_sigterm_requeues_and_the_requeued_job_resumes(tmp_path: Path) -> None:
    venv = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv"))
    if not (venv / "bin" / "dask-datalog").exists():
        pytest.skip("needs the installed command in the virtual environment")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text('#!/bin/sh\nexec "$@"\n')
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    facts = tmp_path / "facts"
    facts.mkdir()
    np.savetxt(facts / "edge.facts", chain(2500), fmt="%d", delimiter="\t")
    want = tmp_path / "want"
    assert cli([REACH, "-F", facts, "-D", want, "--no-cluster"]).returncode == 0
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PROGRAM": str(REACH),
        "FACTS": str(facts),
        "OUT": str(out),
        "VENV": str(venv),
        "SLURM_JOB_ID": "4242",
        "SLURM_CPUS_PER_TASK": "2",
        "CHECKPOINT_EVERY": "0.2",
    }
    first = subprocess.Popen(["bash", str(SCRIPT)], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not (out / "checkpoint" / "latest").exists():
        assert time.monotonic() < deadline and first.poll() is None, "no checkpoint was written"
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)  # to the batch shell, as --signal=B:TERM does
    log, _ = first.communicate(timeout=60)
    assert first.returncode == 0, log
    assert "checkpointed before the time limit; requeueing job 4242" in log
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    assert not (out / "path.csv").exists()
    again = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (out / "path.csv").read_bytes() == (want / "path.csv").read_bytes()
    assert not (out / "checkpoint").exists()
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
