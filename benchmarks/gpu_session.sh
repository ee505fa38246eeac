#!/usr/bin/env bash
# The GPU checks in one command, for a session that is lent a GPU machine (the device tool:
# one call, nothing to install there). From the repository root:
#
#     bash benchmarks/gpu_session.sh            # writes into $OUT (default out/gpu)
#
# The machine's python3 has torch (CUDA), jax with CUDA, diffrax, torchdiffeq, pytest,
# pytest-timeout, scipy and tqdm, but not neuralode: src goes on PYTHONPATH, nothing is
# installed. Each step runs under its own time limit (under 10 minutes in all), its output in
# $OUT/<step>.txt as it runs, so that what finished comes back even when a later step runs
# out of time; the steps run in the order of what matters most:
#   env          the GPU, torch, jax and diffrax versions
#   tests        the tests marked cuda (pytest -m cuda: tests/test_cuda.py, every execution
#                mode, gradients, both façades, DEQ, on CUDA against the CPU, and the others
#                that need CUDA), but the whole solve compiled; -v, so that each test's
#                verdict is in tests.txt as it ends, and at most 120 s a test
#   gpu          neuralode bench --parts gpu: time per step with and without CUDA graphs
#                against torchdiffeq (torchode where installed)
#   diffrax      neuralode bench --parts diffrax --device cuda --full: issue 21's table on
#                the GPU (MLP at batch 1, 16, 256, 1024; Van der Pol one system and per
#                sample; forward + backward), eager, compile=True and compile="cuda_graph"
#                against jitted diffrax on the same GPU; each case's rows print (into
#                diffrax.txt) as it ends
#   compiled     the tests of the whole solve compiled on CUDA (inductor's Triton kernels:
#                minutes of compiling on a cold cache)
# Returned files (the device tool returns 8 at most): the five <step>.txt and each bench's
# bench-<part>.md (its bench.md, the same report, stays out of $OUT).
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
WORK=$(mktemp -d)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python3}
export NEURALODE_DIFFRAX_PYTHON=${NEURALODE_DIFFRAX_PYTHON:-$(command -v "$PYTHON")}
PYTEST=("$PYTHON" -m pytest -v -rfE -p no:cacheprovider -o addopts="" -m cuda
        --continue-on-collection-errors)  # (a test module needing a package absent there)
"$PYTHON" -c "import pytest_timeout" 2>/dev/null && PYTEST+=(--timeout 120)
COMPILED=test_the_whole_solve_compiled_on_cuda

step() {  # step NAME SECONDS COMMAND...: run it, keep its output, print its end
    local name=$1 limit=$2 start=$SECONDS status
    shift 2
    echo "== $name (at most ${limit} s)"
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.txt" 2>&1
    status=$?
    echo "   exit $status after $((SECONDS - start)) s$([ $status = 124 ] && echo ': timed out')"
    tail -n 4 "$OUT/$name.txt" | sed 's/^/   /'
}

bench() {  # bench PART OPTIONS...: neuralode bench into $WORK, its bench-PART.md into $OUT
    local part=$1
    shift
    "$PYTHON" -m neuralode bench --parts "$part" --out "$WORK/$part" "$@"
    local status=$?
    cp "$WORK/$part/bench-$part.md" "$OUT/" 2>/dev/null
    return $status
}
export -f bench
export OUT WORK PYTHON

step env 30 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
$PYTHON -c 'import torch; print(\"torch\", torch.__version__, torch.version.cuda, \
torch.cuda.get_device_name())'; $PYTHON -c 'import jax, diffrax; print(\"jax\", \
jax.__version__, jax.devices(), \"diffrax\", diffrax.__version__)'"
step tests 130 "${PYTEST[@]}" -k "not $COMPILED" tests
step gpu 80 bash -c 'bench gpu'
step diffrax 240 bash -c 'bench diffrax --device cuda --full --repeats 5'
step compiled 100 "${PYTEST[@]}" -k "$COMPILED" tests/test_cuda.py
rm -rf "$WORK"
echo "== done in $SECONDS s; results in $OUT"
