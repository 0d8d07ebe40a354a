#!/usr/bin/env bash
# Everything a session with a CUDA GPU should run, in one go (none of it is needed by CI):
# the CUDA tests, then the step and fit benchmarks against sparsify. Each runs whatever
# the others did, so one short loan of a GPU gives every figure; the script fails if any
# of them did (a benchmark fails without a GPU or, bench_vs_sparsify, without sparsify),
# naming it. Run from anywhere, with sksae (and optionally eai-sparsify) importable:
#
#     bash benchmarks/gpu_checks.sh
set -uo pipefail
cd "$(dirname "$0")/.."

python -c "import torch, sys; sys.exit(not torch.cuda.is_available())" || {
    echo "no CUDA GPU visible to torch: nothing to run" >&2
    exit 2
}
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
status=0
run() {
    "$@" || { echo "FAILED (status $?): $*" >&2; status=1; }
}
run python -m pytest -p no:cacheprovider -q -m cuda tests/test_cuda.py tests/test_nn.py
run python benchmarks/bench_gpu_steps.py
run python benchmarks/bench_vs_sparsify.py --device cuda --rounds 2
exit "$status"
