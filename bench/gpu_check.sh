#!/usr/bin/env bash
# trainkit's CUDA paths and the GPU benchmark, in one go, on a GPU machine:
#
#   bench/gpu_check.sh OUTDIR [--budget-s 500] [--rehearse] [--only STEP,...]
#
# The machine needs python3 with torch, torchvision, torchmetrics, tensorboard, rich and
# scikit-learn; hydra-core and omegaconf come from the wheels in .whl/ when they are missing
# (bench/gpu_wheels.sh makes them, where pip can reach an index), and trainkit runs from this
# checkout (PYTHONPATH), installed or not. OUTDIR gets gpu_check.log, gpu_check.json and the
# benchmark's JSON files. --rehearse runs every step that a CPU can on the CPU, small.
# bench/gpu_check.py says what each step checks.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import hydra, omegaconf" 2>/dev/null; then
    if ! compgen -G ".whl/*.whl" >/dev/null; then
        echo "gpu_check: hydra-core is not installed and .whl/ holds no wheels;" \
            "run bench/gpu_wheels.sh where pip works and carry .whl" >&2
        exit 2
    fi
    site=$(mktemp -d)
    "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir \
        --target "$site" .whl/*.whl || exit 2
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" bench/gpu_check.py "$@"
