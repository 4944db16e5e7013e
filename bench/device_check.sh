#!/usr/bin/env bash
# One prepared run on a lent GPU machine (no network there): install the carried wheels,
# run the test suite on the CuPy backend, a phase profile, the single-shard benchmark on CuPy,
# then the distributed benchmark on CuPy (a 1-worker LocalCUDACluster and 2 CPU process workers
# sharing the GPU, beside the single-process engine). Carry .whl (bash ../shared/device/fetch-wheels.sh,
# plus this project's wheel, built for the GPU machine's Python 3.12 since it holds the compiled
# CPU kernels: python3.12 -m pip wheel --no-deps -w .whl .) and .data (graphs copied from
# ../shared/data; fe_body and usroads at least for the distributed step). The kernels need
# libgomp there (the OpenMP runtime), as on any machine with gcc's runtime.
# Logs go to $OUT (or ./device-out when run by hand). Every step has its own timeout and the
# script goes on when one fails; STEPS (default tests,profile,bench,dist) picks the steps.
#
# Expected wall time on an H100/H200 with 16 cores, about 8-9 minutes in all:
#   install + machine info   ~15 s
#   tests                    ~4.5 min: engine tests ~1.5 min (732 passed in 69 s on an H200),
#                            then tests/test_distributed*.py ~3 min (284 tests took 2.4 min on
#                            2 CPU cores; 72 GPU-only ones more)        TEST_TIMEOUT=420
#   profile                  ~15 s                                       PROFILE_TIMEOUT=90
#   single-shard bench       ~1-1.5 min (4 graphs, a fresh process each) BENCH_TIMEOUT=300
#   distributed bench        ~2-3 min (3 settings x chain + 2 graphs)    DIST_TIMEOUT=240
# The timeouts add up to ~18 minutes, the worst case. The device tool stops a command after
# 600 s, keeping what is under $OUT: the steps run in the order above, so a cut loses the
# last ones; to be sure of one, run fewer (e.g. STEPS=tests,dist; the profile and the
# single-shard figures were measured before).
set -uo pipefail
OUT=${OUT:-device-out}
mkdir -p "$OUT"
STEPS=${STEPS:-tests,profile,bench,dist}
GRAPHS=${GRAPHS:-fe_body,SF.cedge,usroads,fe_ocean}
PROGRAMS=${PROGRAMS:-reach}
TEST_TIMEOUT=${TEST_TIMEOUT:-420}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-300}
PROFILE_TIMEOUT=${PROFILE_TIMEOUT:-90}
DIST_TIMEOUT=${DIST_TIMEOUT:-240}
DIST_GRAPHS=${DIST_GRAPHS:-reach:fe_body,reach:usroads}
DIST_WORKERS=${DIST_WORKERS:-1,2}
step() { case ",$STEPS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  lscpu | grep -E 'Model name|^CPU\(s\)'
  python3 -c "import numpy, cupy, dask, distributed; print('numpy', numpy.__version__, 'cupy', cupy.__version__, 'dask', dask.__version__)"
} > "$OUT/machine.txt" 2>&1

if step tests; then
  # Engine tests first, the distributed ones (clusters, slower) last, so a hang there cannot
  # keep the engine tests from running. --maxfail rather than -x: one failing distributed
  # case should not hide the rest. At the time limit pytest gets SIGINT and still prints its
  # summary (failures so far); faulthandler dumps the stacks of a test stuck for 180 s.
  ENGINE_TESTS=$(ls tests/test_*.py | grep -v -e '^tests/test_distributed' -e '^tests/test_packaging')
  # shellcheck disable=SC2086  # word splitting of the file list is intended
  timeout -s INT -k 30 "$TEST_TIMEOUT" python3 -m pytest -q --maxfail=10 -p no:cacheprovider \
    -o faulthandler_timeout=180 --backend cupy $ENGINE_TESTS tests/test_distributed*.py \
    ${PYTEST_EXTRA:-} > "$OUT/pytest_cupy.log" 2>&1
  echo "pytest rc=$?" >> "$OUT/pytest_cupy.log"
fi

if step profile; then
  # Where the time goes on the card (phases, per-iteration overhead, key-lookup variants).
  timeout "$PROFILE_TIMEOUT" python3 bench/phase_profile.py --backend cupy --program reach \
    --graph .data/fe_body/data_163734.txt --probe-check > "$OUT/profile_cupy.txt" 2>&1
  echo "profile rc=$?" >> "$OUT/profile_cupy.txt"
fi

if step bench; then
  # Whole command (no Soufflé peer on the GPU machine unless carried: then ours alone).
  pairs() { local p g out=""; for g in ${1//,/ }; do for p in ${2//,/ }; do out+="$p:$g,"; done; done; echo "${out%,}"; }
  timeout "$BENCH_TIMEOUT" python3 bench/single_shard.py --data .data --backend cupy --modes no-cluster --repeat 1 \
    --pairs "$(pairs "$GRAPHS" "$PROGRAMS")" --timeout 150 --markdown > "$OUT/bench_cupy.md" 2>&1
  echo "bench rc=$?" >> "$OUT/bench_cupy.md"
  if [ -n "${SG_GRAPHS:-}" ]; then
    timeout "$BENCH_TIMEOUT" python3 bench/single_shard.py --data .data --backend cupy --modes no-cluster --repeat 1 \
      --pairs "$(pairs "$SG_GRAPHS" sg)" --timeout "${SG_RUN_TIMEOUT:-60}" --markdown > "$OUT/bench_sg_cupy.md" 2>&1
    echo "bench rc=$?" >> "$OUT/bench_sg_cupy.md"
  fi
fi

if step dist; then
  # The distributed runtime on the card: single process, then start_cluster(1, 'cupy') (a
  # LocalCUDACluster) and start_cluster(2, 'cupy') (2 CPU process workers sharing the GPU);
  # the per-iteration chain and REACH on the graphs. Progress lines (stderr) land in the same
  # file, so a cut run still shows the runs that finished.
  timeout -k 20 "$DIST_TIMEOUT" python3 bench/multi_worker.py --data .data --backend cupy \
    --workers "$DIST_WORKERS" --graphs "$DIST_GRAPHS" --repeat 1 > "$OUT/bench_dist_cupy.txt" 2>&1
  echo "dist rc=$?" >> "$OUT/bench_dist_cupy.txt"
fi

tail -15 "$OUT/pytest_cupy.log" 2>/dev/null
cat "$OUT/profile_cupy.txt" "$OUT/bench_cupy.md" "$OUT"/bench_sg_cupy.md "$OUT/bench_dist_cupy.txt" 2>/dev/null
exit 0  # each step's rc is the last line of its log; a skipped step leaves no file
