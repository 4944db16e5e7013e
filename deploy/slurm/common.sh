# Sourced by run-single-node.sbatch and run-cluster.sbatch (from the repository root, the
# job's working directory): the settings, the run, the warning signal, requeueing and the log's
# last line.

: "${PROGRAM:?set PROGRAM to the .dl file}"
: "${FACTS:?set FACTS to the fact directory}"
: "${OUT:?set OUT to the output directory}"
source deploy/slurm/setup.sh
CHECKPOINT=${CHECKPOINT:-$OUT/checkpoint}
PHASE=startup
RUN=

# The walltime warning (--signal=B:USR1@120, to this shell alone; SIGUSR1 rather than SIGTERM,
# for which slurmstepd writes "JOB ... CANCELLED" into the log), or `scancel --batch
# --signal=TERM`, goes on to the run as SIGTERM: it checkpoints and exits 75. A plain scancel
# sends SIGTERM to every process of the job, the run included: a second one from here would
# stop it without a checkpoint. Before the run there is nothing to checkpoint, and a job warned
# that early would be warned again if it requeued.
on_signal() {
  case $PHASE in
    startup) say "stopped by SIG$1 before the run started, nothing to checkpoint (exit status 143)"; exit 143 ;;
    run) if [ "$1" = USR1 ] || job_running; then kill -TERM "$RUN" 2>/dev/null || true; fi ;;
  esac
}
trap 'on_signal USR1' USR1
trap 'on_signal TERM' TERM

install_venv
mkdir -p "$OUT"

# run_datalog ARGS: the run, resuming when a checkpoint is there; sets `status`. In the
# background so that this shell takes the warning signal while it runs.
run_datalog() {
  local from=(--checkpoint "$CHECKPOINT")
  if [ -f "$CHECKPOINT/latest" ]; then
    from=(--resume "$CHECKPOINT")
    say "resuming from $CHECKPOINT"
  fi
  [ -n "${CHECKPOINT_EVERY:-}" ] && from+=(--checkpoint-every "$CHECKPOINT_EVERY")
  "$VENV/bin/dask-datalog" run "$PROGRAM" -F "$FACTS" -D "$OUT" "$@" "${from[@]}" --stats "$OUT/stats.json" &
  RUN=$!
  PHASE=run
  while :; do
    wait "$RUN" && status=0 || status=$?
    kill -0 "$RUN" 2>/dev/null || break  # else a trapped signal interrupted wait
  done
  PHASE=end
}

# finish STATUS: the log's last line; on 75 (checkpointed on SIGTERM) the job requeues itself.
finish() {
  case $1 in
    0) rm -rf "$CHECKPOINT"; say "done, outputs in $OUT (exit status 0)" ;;
    75)
      # Not after scancel: a cancelled job would come back.
      if job_running; then
        say "checkpointed into $CHECKPOINT (exit status 75); requeueing, the next start resumes"
        scontrol requeue "$SLURM_JOB_ID" && exit 0
      fi
      say "checkpointed into $CHECKPOINT (exit status 75); submit the same command again to resume" ;;
    1) say "failed (exit status 1): the error is above" ;;
    124) say "stopped by --timeout (exit status 124)" ;;
    130) say "interrupted (exit status 130)" ;;
    143) say "stopped by SIGTERM without a checkpoint (exit status 143)" ;;
    *) say "failed (exit status $1)" ;;
  esac
  exit "$1"
}
