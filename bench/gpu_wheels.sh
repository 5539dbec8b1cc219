#!/usr/bin/env bash
# The wheels that bench/gpu_check.sh installs on a GPU machine that has torch, torchvision,
# torchmetrics, tensorboard, rich and scikit-learn but no package index: hydra-core, omegaconf
# and antlr4-python3-runtime, all pure Python, built or fetched here into .whl/ (ignored by
# git) at the top of the repository, for the GPU machine's Python 3.12.
#
#   bench/gpu_wheels.sh        # then carry .whl with the checkout
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
# pip wheel: a wheel where the index has one, else built from the sdist (antlr4 4.9.3 has
# only an sdist); --no-deps: the GPU machine has the rest.
python3 -m pip wheel --quiet --no-deps --wheel-dir .whl \
    'hydra-core>=1.3,<1.4' 'omegaconf>=2.3,<2.4' 'antlr4-python3-runtime==4.9.*'
ls .whl
