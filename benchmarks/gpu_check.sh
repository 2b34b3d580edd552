#!/usr/bin/env bash
# One run on a machine with a CUDA GPU, in under 5 minutes:
#   1. the op tests on the GPU (Triton kernels compiled for real, not interpreted);
#   2. Triton kernels against the PyTorch path and the literal reference;
#   3. achieved GB/s against a device-to-device copy measured in the same run;
#   4. a short table, printed last.
# Usage: benchmarks/gpu_check.sh [--out DIR]   (PYTHON=... to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA GPU visible to torch')"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
"$PY" -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__)"
timeout 180 "$PY" -m pytest tests/ops -q -p no:cacheprovider
timeout 120 "$PY" benchmarks/gpu_report.py "$@"
