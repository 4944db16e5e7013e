# Sourced by run-cluster.sbatch and serve.sbatch (after setup.sh): a Dask cluster over the
# allocation. A scheduler on the batch node (on free ports, its address in $ADDRESS, its file in
# $SCHEDULER_FILE), one worker per SLURM task (`dask cuda worker` on GPU nodes, else a
# single-threaded `dask worker` with its share of the job's memory), every one joined before
# this returns; `stop_cluster` stops them, as does the script's exit.
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-300}
# Warnings and errors only: the info lines of every worker's start and stop would bury the
# run's own messages (DASK_LOGGING__DISTRIBUTED=info brings them back).
export DASK_LOGGING__DISTRIBUTED=${DASK_LOGGING__DISTRIBUTED:-warning}
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
# One worker per task; without a task count srun starts one per node.
NTASKS=${SLURM_NTASKS:-${SLURM_JOB_NUM_NODES:-1}}

SCHEDULER=
WORKERS=
# Node-local; removed by the sourcing script once read (run-cluster.sbatch) or at its exit.
SCHEDULER_FILE=$(mktemp "${TMPDIR:-/tmp}/dask-scheduler-$SLURM_JOB_ID.XXXXXX")

# stop_after PID SECONDS: wait for PID to exit; past SECONDS, SIGTERM, then SIGKILL.
stop_after() {
  local i
  for ((i = 0; i < $2 * 5; i++)); do
    kill -0 "$1" 2>/dev/null || break
    sleep 0.2
  done
  if kill -TERM "$1" 2>/dev/null; then
    for ((i = 0; i < 25; i++)); do
      kill -0 "$1" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL "$1" 2>/dev/null || true
  fi
  wait "$1" 2>/dev/null || true
}

# Each nanny stops its worker and exits, so the worker step ends by itself (no cancelled step).
# Not through the scheduler (Client.shutdown, SIGTERM): a worker it closes exits under its
# nanny's feet, which then logs "Worker process died unexpectedly" with a traceback.
stop_cluster() {
  [ -n "$SCHEDULER" ] || return 0
  if [ -n "$WORKERS" ] && job_running; then  # after scancel the nannies are closing already
    timeout 60 "$VENV/bin/python" - "$ADDRESS" 2>/dev/null <<'PY' || true
import sys
from distributed import Client

with Client(sys.argv[1], timeout="10s") as client:
    for op in ("close_gracefully", "kill"):  # not restarted, then stopped
        client.sync(client.scheduler.broadcast, msg={"op": op, "reason": "dask-datalog-done"}, nanny=True)
PY
    stop_after "$WORKERS" 30
  fi
  kill -TERM "$SCHEDULER" 2>/dev/null || true
  stop_after "$SCHEDULER" 10
  SCHEDULER=
}
trap 'stop_cluster; rm -f "$SCHEDULER_FILE"' EXIT

fail() { say "$1 (exit status 1)"; exit 1; }

scheduler=(--scheduler-file "$SCHEDULER_FILE" --port 0 --dashboard-address :0)
worker=(--death-timeout 60)
[ -n "${PROTOCOL:-}" ] && scheduler+=(--protocol "$PROTOCOL")
[ -n "${INTERFACE:-}" ] && scheduler+=(--interface "$INTERFACE") && worker+=(--interface "$INTERFACE")
"$VENV/bin/dask" scheduler "${scheduler[@]}" &
SCHEDULER=$!
for ((i = 0; ; i++)); do
  kill -0 "$SCHEDULER" 2>/dev/null || fail "the Dask scheduler exited before it started; its messages are above"
  ((i < STARTUP_TIMEOUT * 5)) || fail "the Dask scheduler did not start within ${STARTUP_TIMEOUT}s"
  read -r ADDRESS DASHBOARD < <("$VENV/bin/python" - "$SCHEDULER_FILE" 2>/dev/null <<'PY'
import json, sys
info = json.load(open(sys.argv[1]))
print(info["address"], info.get("services", {}).get("dashboard", "-"))
PY
  ) && break
  sleep 0.2
done
say "start $((${SLURM_RESTART_COUNT:-0} + 1)): ${SLURM_JOB_NUM_NODES:-1} node(s), $NTASKS worker(s); scheduler $ADDRESS, dashboard on port $DASHBOARD of $(hostname)"

if command -v nvidia-smi >/dev/null 2>&1; then
  worker=(cuda worker "$ADDRESS" "${worker[@]}")
else
  worker=(worker "$ADDRESS" "${worker[@]}" --nthreads 1 --nworkers 1)
  # Each worker's share of the job's memory (Dask would assume the whole node's): its cores'
  # part of --mem-per-cpu, or --mem (per node) over the most tasks a node of the job runs.
  share=0
  if [ -n "${SLURM_MEM_PER_CPU:-}" ]; then
    share=$((SLURM_MEM_PER_CPU * OMP_NUM_THREADS))
  elif [ -n "${SLURM_MEM_PER_NODE:-}" ]; then  # SLURM_TASKS_PER_NODE: e.g. "4(x2),3"
    most=$(tr , '\n' <<<"${SLURM_TASKS_PER_NODE:-1}" | sed 's/(.*//' | sort -n | tail -n 1)
    share=$((SLURM_MEM_PER_NODE / most))
  fi
  if [ "$share" -gt 0 ]; then  # --mem=0 is the whole node: Dask's own default then
    worker+=(--memory-limit "${share}MiB")
    say "each worker's memory limit: $share MiB"
  fi
fi
step=(--kill-on-bad-exit=0)
# srun does not pass the job's --cpus-per-task on to its steps in some SLURM versions.
[ -n "${SLURM_CPUS_PER_TASK:-}" ] && step+=(--cpus-per-task "$SLURM_CPUS_PER_TASK")
srun "${step[@]}" "$VENV/bin/dask" "${worker[@]}" &
WORKERS=$!

# Every task's worker joins before the run (its shards are one per worker), or the job ends.
"$VENV/bin/python" - "$ADDRESS" "$NTASKS" "$WORKERS" "$STARTUP_TIMEOUT" <<'PY' || fail "the Dask workers did not start"
import os, sys, time
from distributed import Client

address, n, step, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
deadline = time.monotonic() + timeout
with Client(address, timeout=timeout) as client:
    while len(client.ncores()) < n:
        try:
            os.kill(step, 0)
        except ProcessLookupError:
            sys.exit("the workers' srun step ended; its messages are above")
        if time.monotonic() > deadline:
            sys.exit(f"{len(client.ncores())} of {n} workers joined in {timeout:.0f}s")
        time.sleep(0.2)
PY
