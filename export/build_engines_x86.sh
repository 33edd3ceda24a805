#!/usr/bin/env bash
# Build the TensorRT engines of an ONNX bundle on an x86 machine with an NVIDIA GPU.
#
#   export/build_engines_x86.sh BUNDLE [OUT]
#
# Environment (all optional):
#   PRECISION=fp16        fp16 | bf16 (sm_80+) | int8 (Q/DQ-quantized bundle) | fp32
#   WORKSPACE_MB=4096     builder workspace
#   MAX_PROMPT=128 MAX_NEW_TOKENS=48 MAX_BATCH=1
#   TIMING_CACHE=~/.cache/ros2_gmskip/trt-<gpu>.timing
#   CUDA_VISIBLE_DEVICES  which GPU builds (and will run) the engines
#   ROS2_GMSKIP=ros2-gmskip   the CLI to run
# OUT defaults to engines/<gpu>-<precision>. Engines are specific to this GPU model and this
# TensorRT version: rebuild after upgrading either (the runtime refuses stale engines and says so).
set -euo pipefail

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 0
fi
BUNDLE=$1
PRECISION=${PRECISION:-fp16}
ROS2_GMSKIP=${ROS2_GMSKIP:-ros2-gmskip}

if [[ ! -f $BUNDLE/manifest.json ]]; then
    echo "error: $BUNDLE is not an ONNX bundle (no manifest.json): make one with" \
         "ros2-gmskip export" >&2
    exit 1
fi
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "error: no NVIDIA GPU / driver found (nvidia-smi failed): engines must be built on" \
         "the machine that runs them" >&2
    exit 1
fi
if ! python3 -c 'import tensorrt' 2>/dev/null; then
    echo "error: TensorRT is not installed for $(command -v python3): pip install tensorrt" \
         "cuda-python" >&2
    exit 1
fi
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
GPU_TAG=$(echo "$GPU" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/^-//; s/-$//')
OUT=${2:-engines/${GPU_TAG}-${PRECISION}}
TIMING_CACHE=${TIMING_CACHE:-$HOME/.cache/ros2_gmskip/trt-${GPU_TAG}.timing}
mkdir -p "$(dirname "$TIMING_CACHE")"
echo "GPU: $GPU; TensorRT $(python3 -c 'import tensorrt; print(tensorrt.__version__)')"

args=(build-engine "$BUNDLE" --out "$OUT" --precision "$PRECISION"
      --workspace-mb "${WORKSPACE_MB:-4096}" --max-batch "${MAX_BATCH:-1}"
      --max-prompt "${MAX_PROMPT:-128}" --max-new-tokens "${MAX_NEW_TOKENS:-48}"
      --timing-cache "$TIMING_CACHE")
echo "+ $ROS2_GMSKIP ${args[*]}"
"$ROS2_GMSKIP" "${args[@]}"
