#!/usr/bin/env bash
# One prepared run on a lent GPU machine (no network there): install the carried wheels,
# run the test suite on the CuPy backend, a phase profile, then the single-shard benchmark
# on CuPy. Carry .whl (bash ../shared/device/fetch-wheels.sh, plus this project's wheel:
# python -m build --wheel -o .whl) and .data (graphs copied from ../shared/data).
# Logs go to $OUT (or ./device-out when run by hand).
set -uo pipefail
OUT=${OUT:-device-out}
mkdir -p "$OUT"
GRAPHS=${GRAPHS:-fe_body,SF.cedge,usroads,fe_ocean}
PROGRAMS=${PROGRAMS:-reach}
TEST_TIMEOUT=${TEST_TIMEOUT:-240}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-300}
PROFILE_TIMEOUT=${PROFILE_TIMEOUT:-90}

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  lscpu | grep -E 'Model name|^CPU\(s\)'
  python3 -c "import numpy, cupy, dask, distributed; print('numpy', numpy.__version__, 'cupy', cupy.__version__, 'dask', dask.__version__)"
} > "$OUT/machine.txt" 2>&1

timeout "$TEST_TIMEOUT" python3 -m pytest -q -x -p no:cacheprovider --backend cupy tests \
  --deselect tests/test_packaging.py ${PYTEST_EXTRA:-} > "$OUT/pytest_cupy.log" 2>&1
echo "pytest rc=$?" >> "$OUT/pytest_cupy.log"

# Where the time goes on the card (phases, per-iteration overhead, key-lookup variants).
timeout "$PROFILE_TIMEOUT" python3 bench/phase_profile.py --backend cupy --program reach \
  --graph .data/fe_body/data_163734.txt --probe-check > "$OUT/profile_cupy.txt" 2>&1
echo "profile rc=$?" >> "$OUT/profile_cupy.txt"

timeout "$BENCH_TIMEOUT" python3 bench/single_shard.py --data .data --backend cupy --no-duckdb --no-process --warmup \
  --graphs "$GRAPHS" --programs "$PROGRAMS" --timeout 150 --markdown > "$OUT/bench_cupy.md" 2>&1
echo "bench rc=$?" >> "$OUT/bench_cupy.md"
if [ -n "${SG_GRAPHS:-}" ]; then
  timeout "$BENCH_TIMEOUT" python3 bench/single_shard.py --data .data --backend cupy --no-duckdb --no-process --warmup \
    --graphs "$SG_GRAPHS" --programs sg --timeout "${SG_RUN_TIMEOUT:-60}" --markdown > "$OUT/bench_sg_cupy.md" 2>&1
  echo "bench rc=$?" >> "$OUT/bench_sg_cupy.md"
fi
tail -5 "$OUT/pytest_cupy.log"; cat "$OUT/profile_cupy.txt" "$OUT/bench_cupy.md" "$OUT"/bench_sg_cupy.md 2>/dev/null
