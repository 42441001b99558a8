#!/usr/bin/env bash
# Prepare a GPU device call here, on the development machine (docs/gpu.md):
#   bash launch/stage_gpu.sh [--stage_call=CALL]
# first runs the call shrunk on this CPU (GPU_DRY_RUN=1 bash launch/gpu_suite.sh CALL, default the headline call,
# ~2 minutes) and stages nothing unless every stage ends ok (--stage_call='' or GPU_SKIP_DRY_RUN=1 skips it); then
# fills the git-ignored .gpu_stage/ with what the call reads and the device lacks: whl/ (grain, array-record,
# ml-collections, tensorboardX, portpicker for Python 3.12, from ../shared/device/wheels-py312 or $DLM_DEVICE_WHEELS),
# data/ (the corpora the calls and tests read, from $DLM_DATA_DIR or ../shared/data) and COMMIT (the commit id the
# rows are stamped with), then prints the device command and the carry list.
set -euo pipefail
cd "$(dirname "$0")/.."
folder="${GPU_STAGE_DIR:-.gpu_stage}"
wheels="${DLM_DEVICE_WHEELS:-../shared/device/wheels-py312}"
exec "$(command -v python3 || command -v python)" -m launch.gpu_suite --stage="$folder" --wheels="$wheels" "$@"
