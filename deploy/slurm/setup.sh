# Sourced by every script here (from the repository root, the job's working directory): the
# virtual environment, the log's voice, whether the job still runs.

VENV=${VENV:-.venv}

say() { echo "dask-datalog job $SLURM_JOB_ID: $*"; }

# False once the job is cancelled (scancel: COMPLETING), or ended.
job_running() { [[ $(scontrol show job "$SLURM_JOB_ID" 2>/dev/null) == *JobState=RUNNING* ]]; }

# The package in $VENV, installed there (with the GPU extra on a GPU node) when missing.
install_venv() {
  if [ ! -x "$VENV/bin/dask-datalog" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    if command -v nvidia-smi >/dev/null 2>&1; then
      "$VENV/bin/pip" install -q '.[gpu]'
    else
      "$VENV/bin/pip" install -q .
    fi
  fi
}
