#!/usr/bin/env bash
# Prepare a GPU device call here, on the development machine (docs/gpu.md):
#   bash launch/stage_gpu.sh
# fills the git-ignored .gpu_stage/ with what the call reads and the device lacks: whl/ (grain, array-record,
# ml-collections, tensorboardX, portpicker for Python 3.12, from ../shared/device/wheels-py312 or $DLM_DEVICE_WHEELS),
# data/ (the corpora the calls and tests read, from $DLM_DATA_DIR or ../shared/data) and COMMIT (the commit id the
# rows are stamped with), then prints the device command and the carry list.
set -euo pipefail
cd "$(dirname "$0")/.."
folder="${GPU_STAGE_DIR:-.gpu_stage}"
wheels="${DLM_DEVICE_WHEELS:-../shared/device/wheels-py312}"
exec "$(command -v python3 || command -v python)" -m launch.gpu_suite --stage="$folder" --wheels="$wheels"
