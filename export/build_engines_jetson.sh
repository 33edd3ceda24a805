#!/usr/bin/env bash
# Build the TensorRT engines of an ONNX bundle on a Jetson (JetPack 6, TensorRT 10.x).
#
#   export/build_engines_jetson.sh BUNDLE [OUT]
#
# Environment (all optional):
#   PRECISION=fp16        fp16 | int8 (Q/DQ-quantized bundle) | fp32
#   DLA_CORE=0            run the vision graph on this DLA core (fp16 / int8 only)
#   WORKSPACE_MB=2048     builder workspace; lower it on 8 GB modules if the build runs out of memory
#   MAX_PROMPT=128 MAX_NEW_TOKENS=48 MAX_BATCH=1
#   TIMING_CACHE=~/.cache/ros2_gmskip/trt-<host>.timing
#   ROS2_GMSKIP=ros2-gmskip   the CLI to run
# OUT defaults to engines/<host>-<precision>[-dla<N>]. Engines are specific to this GPU and this
# TensorRT: rebuild after a JetPack upgrade (the runtime refuses stale engines and says so).
set -euo pipefail

if [[ $# -lt 1 || $1 == -h || $1 == --help ]]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 0
fi
BUNDLE=$1
PRECISION=${PRECISION:-fp16}
HOST=$(hostname -s)
SUFFIX=${DLA_CORE:+-dla${DLA_CORE}}
OUT=${2:-engines/${HOST}-${PRECISION}${SUFFIX}}
TIMING_CACHE=${TIMING_CACHE:-$HOME/.cache/ros2_gmskip/trt-${HOST}.timing}
ROS2_GMSKIP=${ROS2_GMSKIP:-ros2-gmskip}

if [[ ! -f $BUNDLE/manifest.json ]]; then
    echo "error: $BUNDLE is not an ONNX bundle (no manifest.json): make one with" \
         "ros2-gmskip export on the dev machine and copy the folder here" >&2
    exit 1
fi
if ! python3 -c 'import tensorrt' 2>/dev/null; then
    echo "error: TensorRT's Python bindings are missing: sudo apt install python3-libnvinfer" \
         "(part of JetPack 6)" >&2
    exit 1
fi
if ! python3 -c 'import cuda.bindings.runtime' 2>/dev/null \
        && ! python3 -c 'from cuda import cudart' 2>/dev/null \
        && ! python3 -c 'import pycuda.driver' 2>/dev/null; then
    echo "warning: neither cuda-python nor pycuda is installed: the engines will build, but the" \
         "tensorrt backend needs one to run them (pip install cuda-python)" >&2
fi
if [[ -r /etc/nv_tegra_release ]]; then
    echo "L4T: $(head -n 1 /etc/nv_tegra_release)"
fi
if command -v nvpmodel >/dev/null; then
    echo "power mode: $(nvpmodel -q 2>/dev/null | head -n 1 || true)" \
         "(for stable timings: sudo nvpmodel -m 0 && sudo jetson_clocks)"
fi
mkdir -p "$(dirname "$TIMING_CACHE")"

args=(build-engine "$BUNDLE" --out "$OUT" --precision "$PRECISION"
      --workspace-mb "${WORKSPACE_MB:-2048}" --max-batch "${MAX_BATCH:-1}"
      --max-prompt "${MAX_PROMPT:-128}" --max-new-tokens "${MAX_NEW_TOKENS:-48}"
      --timing-cache "$TIMING_CACHE")
if [[ -n ${DLA_CORE:-} ]]; then
    args+=(--dla-core "$DLA_CORE")
fi
echo "+ $ROS2_GMSKIP ${args[*]}"
"$ROS2_GMSKIP" "${args[@]}"
