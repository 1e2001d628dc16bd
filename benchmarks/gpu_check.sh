#!/usr/bin/env bash
# The GPU check (see benchmarks/gpu_check.py): at most about 8 minutes on a machine with an NVIDIA GPU.
#   bash benchmarks/gpu_check.sh [--out gpu_check.json]     on the GPU machine
#   bash benchmarks/gpu_check.sh --cpu-dry-run              the same path, tiny sizes, on a CPU
# Installs nothing but the project's own requirements, and only when cadl is not importable.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
if ! "$python" -c "import pipelines.extract, jobs.cli" 2>/dev/null; then
  "$python" -m pip install --quiet .
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec timeout --signal=INT 480 "$python" benchmarks/gpu_check.py "$@"
