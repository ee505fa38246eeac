#!/usr/bin/env bash
# The GPU checks in one command, for a session that is lent a GPU machine (the device tool:
# one call, nothing to install there). From the repository root:
#
#     bash benchmarks/gpu_session.sh            # writes into $OUT (default out/gpu)
#
# The machine's python3 has torch (CUDA), jax with CUDA, diffrax, torchdiffeq, pytest, scipy
# and tqdm, but not neuralode: src goes on PYTHONPATH, nothing is installed. Each step runs
# under its own time limit (about 9 minutes in all), its output in $OUT/<step>.txt, so that
# what finished comes back even when a later step runs out of time:
#   env          the GPU, torch, jax and diffrax versions
#   tests        tests/test_cuda.py (every execution mode, gradients, both façades, DEQ, on
#                CUDA against the CPU) and the other tests that need CUDA
#   gpu          neuralode bench --parts gpu: time per step with and without CUDA graphs
#                against torchdiffeq (torchode where installed)
#   diffrax      neuralode bench --parts diffrax --device cuda --full: issue 21's table on
#                the GPU (MLP at batch 1, 16, 256, 1024; Van der Pol one system and per
#                sample; forward + backward), eager, compile=True and compile="cuda_graph"
#                against jitted diffrax on the same GPU; each case's rows print as it ends
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python3}
export NEURALODE_DIFFRAX_PYTHON=${NEURALODE_DIFFRAX_PYTHON:-$(command -v "$PYTHON")}

step() {  # step NAME SECONDS COMMAND...: run it, keep its output, print its end
    local name=$1 limit=$2 start=$SECONDS status
    shift 2
    echo "== $name (at most ${limit} s)"
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.txt" 2>&1
    status=$?
    echo "   exit $status after $((SECONDS - start)) s$([ $status = 124 ] && echo ': timed out')"
    tail -n 4 "$OUT/$name.txt" | sed 's/^/   /'
}

step env 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
$PYTHON -c 'import torch; print(\"torch\", torch.__version__, torch.version.cuda, \
torch.cuda.get_device_name())'; $PYTHON -c 'import jax, diffrax; print(\"jax\", \
jax.__version__, jax.devices(), \"diffrax\", diffrax.__version__)'"
step tests 150 "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_cuda.py \
    "tests/test_per_sample.py::test_cuda_graph_on_a_gpu_matches_the_eager_loop" \
    "tests/test_errors.py::test_times_on_cuda_state_on_cpu" tests/test_pde.py -k "cuda or CUDA"
step gpu 90 "$PYTHON" -m neuralode bench --parts gpu --out "$OUT/bench-gpu"
step diffrax 240 "$PYTHON" -m neuralode bench --parts diffrax --device cuda --full \
    --repeats 5 --out "$OUT/bench-diffrax"
echo "== done in $SECONDS s; results in $OUT"
