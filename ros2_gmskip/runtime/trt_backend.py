# Copyright 2026 ros2_gmskip developers
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""
The native TensorRT backend: engines built by `ros2-gmskip build-engine`, run with enqueueV3.

    backend = TrtBackend(Path('engines/orin-fp16'), Path('bundles/gmskip-8of16'))
    result = backend.describe(rgb_uint8, 'describe the scene.')
    ok, why = available()          # (False, 'TensorRT is not installed ...') on a CPU-only machine

Loading checks `engine_manifest.json` against this machine (TensorRT version, GPU name and compute
capability) and the bundle (source ONNX hashes) and refuses a mismatch with one line that says what
to run; `rebuild=True` rebuilds stale engines instead, and a folder without engines is built on
first use (as Autoware's TensorRT nodes do on first start). One `describe` is the onnxruntime
backend's pipeline - the same `Preprocessor`, `PromptTokenizer` and decode loop
(runtime/decode.py) - with one `TrtRunner` (runner.SegmentRunner) per decoder segment:

    vision engine        pixel_values (1, 3, H, W) -> image_embeds (1, n, C)   one context
    decoder engine(s)    profile 0 "prefill": whole prompt, empty past          one context each,
    (one per segment)    profile 1 "decode":  one token, past grows by 1       so no profile switch

What keeps a decode step lean: every device buffer is allocated once, at the engine's maximum
shapes; the attention mask (all ones) is uploaded once; each segment's KV cache lives in two
preallocated banks that swap roles each step (the step reads `past` from one bank and writes
`present`, which is past + the new token, into the other), so the cache never leaves the GPU and
is never copied; per step only the token's embedding (C floats) and its position go up and the
last logits row comes down (with several segments, also the residual stream between them).
Input shapes are set per call (`set_input_shape`), addresses per call only for the KV banks.

Token skipping runs as on ONNX Runtime, through the same loop: FastV ranks by the ranking
segment's `last_token_attention` output; visual KV removal compacts each K / V tensor of a bank
through the host, once per request. The decode profile takes one new row, so decoding is one
token per run (no drafts).

CUDA calls go through cuda-python (`cuda.bindings.runtime`, formerly `cuda.cudart`, as TensorRT
10's Python samples use it), else pycuda. Never imports torch or transformers.
"""

from __future__ import annotations

from dataclasses import dataclass
import logging
from pathlib import Path
import shutil
import subprocess

import numpy as np
from ros2_gmskip.bundle_format import (ATTENTION_MASK, Bundle, DecoderShape, LAST_TOKEN_ATTENTION,
                                       load_bundle, POSITION_IDS, Segment)
from ros2_gmskip.errors import EngineError
from ros2_gmskip.runtime.bundle_backend import BundleBackend
from ros2_gmskip.runtime.decode import DecodeLoop
from ros2_gmskip.runtime.qwen import check_tensorrt
from ros2_gmskip.runtime.results import BackendInfo
from ros2_gmskip.runtime.runner import Prefilled
from ros2_gmskip.tokenskip.settings import TokenSkip

log = logging.getLogger(__name__)

TRT_MISSING = ('TensorRT is not installed (pip/apt package python3-libnvinfer / tensorrt); '
               'install it where the GPU is (JetPack ships it on Jetson; x86: pip install '
               'tensorrt) or use the onnxruntime backend')
CUDA_MISSING = ('neither cuda-python nor pycuda is installed, so TensorRT buffers cannot be '
                'allocated: pip install cuda-python (or apt install python3-pycuda on Jetson)')
ALIGN = 256      # IExecutionContext.set_tensor_address: "at least 256-byte alignment"
PREFILL, DECODE = 0, 1      # decoder optimization profiles (runtime/trt_profiles.py)


def import_tensorrt():
    """Return the `tensorrt` module, or raise EngineError with how to install it."""
    try:
        import tensorrt
    except ImportError as err:
        raise EngineError(TRT_MISSING) from err
    return tensorrt


def make_logger(trt, verbose: bool = False):
    """Return a `trt.ILogger` that forwards TensorRT's messages to the `tensorrt` logger."""
    S = trt.ILogger.Severity
    levels = {S.INTERNAL_ERROR: logging.CRITICAL, S.ERROR: logging.ERROR,
              S.WARNING: logging.WARNING, S.INFO: logging.INFO, S.VERBOSE: logging.DEBUG}
    trt_log = logging.getLogger('tensorrt')

    class _Logger(trt.ILogger):

        def __init__(self) -> None:
            trt.ILogger.__init__(self)          # the docs' required explicit base init

        def log(self, severity, msg) -> None:
            level = levels.get(severity, logging.INFO)
            if level == logging.INFO and not verbose:
                level = logging.DEBUG           # TensorRT's INFO is chatty: DEBUG unless verbose
            trt_log.log(level, '%s', msg)

    logger = _Logger()
    logger.min_severity = S.VERBOSE if verbose else S.INFO
    return logger


# --- CUDA: device query, memory, streams ------------------------------------------------------

@dataclass(frozen=True)
class GpuInfo:
    """A GPU as engine manifests record it; None where it could not be queried."""

    name: str | None
    compute_capability: str | None        # 'major.minor', e.g. '8.7'

    def __str__(self) -> str:
        cc = self.compute_capability
        return f'{self.name or "unknown GPU"} (sm_{cc.replace(".", "") if cc else "unknown"})'


def _import_cudart():
    """cuda-python's runtime module (`cuda.bindings.runtime` in 12.6+/13, `cuda.cudart` before)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        from cuda import cudart  # noqa: F401 - raises ImportError when cuda-python is absent
    return cudart


class CudaPython:
    """The CUDA runtime calls the backend needs, through cuda-python (TensorRT 10 samples' way)."""

    name = 'cuda-python'

    def __init__(self, cudart=None) -> None:
        self.rt = cudart if cudart is not None else _import_cudart()

    def _call(self, what: str, result):
        err, rest = result[0], result[1:]
        if int(err) != 0:
            raise EngineError(f'CUDA {what} failed: {err}')
        return rest[0] if len(rest) == 1 else None

    def device_count(self) -> int:
        return int(self._call('cudaGetDeviceCount', self.rt.cudaGetDeviceCount()))

    def set_device(self, device: int) -> None:
        self._call('cudaSetDevice', self.rt.cudaSetDevice(device))

    def device_info(self, device: int = 0) -> GpuInfo:
        prop = self._call('cudaGetDeviceProperties', self.rt.cudaGetDeviceProperties(device))
        name = prop.name.decode(errors='replace') if isinstance(prop.name, bytes) else prop.name
        return GpuInfo(name.strip('\x00').strip(), f'{prop.major}.{prop.minor}')

    def malloc(self, nbytes: int) -> int:
        return int(self._call('cudaMalloc', self.rt.cudaMalloc(max(int(nbytes), 1))))

    def free(self, ptr: int) -> None:
        self._call('cudaFree', self.rt.cudaFree(ptr))

    def stream(self):
        return self._call('cudaStreamCreate', self.rt.cudaStreamCreate())

    def stream_handle(self, stream):
        return stream            # as TensorRT's samples: execute_async_v3(stream_handle=stream)

    def destroy_stream(self, stream) -> None:
        self._call('cudaStreamDestroy', self.rt.cudaStreamDestroy(stream))

    def h2d(self, ptr: int, array: np.ndarray, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call('cudaMemcpyAsync', self.rt.cudaMemcpyAsync(
            ptr, array.ctypes.data, array.nbytes, kind, stream))

    def d2h(self, array: np.ndarray, ptr: int, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call('cudaMemcpyAsync', self.rt.cudaMemcpyAsync(
            array.ctypes.data, ptr, array.nbytes, kind, stream))

    def sync(self, stream) -> None:
        self._call('cudaStreamSynchronize', self.rt.cudaStreamSynchronize(stream))


class PyCuda:
    """The same calls through pycuda (older Jetson images ship python3-pycuda, not cuda-python)."""

    name = 'pycuda'

    def __init__(self) -> None:
        import pycuda.autoinit  # noqa: F401 - creates the context TensorRT then runs in
        import pycuda.driver as drv
        self.drv = drv
        self._allocations: dict[int, object] = {}

    def device_count(self) -> int:
        return int(self.drv.Device.count())

    def set_device(self, device: int) -> None:
        if device != 0:
            raise EngineError('with pycuda only GPU 0 is supported: pip install cuda-python')

    def device_info(self, device: int = 0) -> GpuInfo:
        dev = self.drv.Device(device)
        major, minor = dev.compute_capability()
        return GpuInfo(dev.name(), f'{major}.{minor}')

    def malloc(self, nbytes: int) -> int:
        allocation = self.drv.mem_alloc(max(int(nbytes), 1))
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, ptr: int) -> None:
        allocation = self._allocations.pop(ptr, None)
        if allocation is not None:
            allocation.free()

    def stream(self):
        return self.drv.Stream()

    def stream_handle(self, stream):
        return stream.handle

    def destroy_stream(self, stream) -> None:
        pass

    def h2d(self, ptr: int, array: np.ndarray, stream) -> None:
        self.drv.memcpy_htod_async(ptr, array, stream)

    def d2h(self, array: np.ndarray, ptr: int, stream) -> None:
        self.drv.memcpy_dtoh_async(array, ptr, stream)

    def sync(self, stream) -> None:
        stream.synchronize()


def cuda_runtime():
    """cuda-python if importable, else pycuda; EngineError saying what to install otherwise."""
    try:
        return CudaPython()
    except ImportError:
        pass
    try:
        return PyCuda()
    except ImportError:
        raise EngineError(CUDA_MISSING) from None
    except Exception as err:  # noqa: BLE001 - pycuda.autoinit raises its own errors (no GPU)
        raise EngineError(f'pycuda cannot open a CUDA context ({err}): is there a GPU?') from err


def _nvidia_smi_info(device: int) -> GpuInfo | None:
    exe = shutil.which('nvidia-smi')
    if not exe:
        return None
    try:
        out = subprocess.run([exe, f'--id={device}', '--query-gpu=name,compute_cap',
                              '--format=csv,noheader'], capture_output=True, text=True,
                             timeout=10, check=True).stdout
        name, cc = [part.strip() for part in out.strip().splitlines()[0].rsplit(',', 1)]
        return GpuInfo(name, cc)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def gpu_info(device: int = 0) -> GpuInfo:
    """
    Return this machine's GPU, for engine manifests.

    Asks cuda-python, else pycuda, else nvidia-smi (the TensorRT Python API itself does not
    expose the device's name); GpuInfo(None, None) if none of them can tell (then manifests are
    checked for the TensorRT version only, with a warning).
    """
    try:
        return CudaPython().device_info(device)
    except (ImportError, EngineError) as err:
        log.debug('cuda-python cannot query GPU %d: %s', device, err)
    try:
        import pycuda.driver as drv
        drv.init()
        dev = drv.Device(device)
        major, minor = dev.compute_capability()
        return GpuInfo(dev.name(), f'{major}.{minor}')
    except Exception as err:  # noqa: BLE001 - ImportError, pycuda's LogicError / RuntimeError
        log.debug('pycuda cannot query GPU %d: %s', device, err)
    return _nvidia_smi_info(device) or GpuInfo(None, None)


def available() -> tuple[bool, str]:
    """
    Tell whether this backend can run here -> (ok, why).

    (True, 'TensorRT 10.3.0 on Orin (sm_87)') or (False, why not: TensorRT missing, CUDA
    bindings missing, no GPU).
    """
    try:
        trt = import_tensorrt()
    except EngineError as err:
        return False, str(err)
    try:
        cuda = cuda_runtime()
        if cuda.device_count() < 1:
            return False, 'no CUDA GPU found'
        return True, f'TensorRT {trt.__version__} on {cuda.device_info(0)} via {cuda.name}'
    except EngineError as err:
        return False, str(err)


# --- engines ------------------------------------------------------------------------------------

def default_engine_dir(bundle_path: Path, precision: str = 'fp16') -> Path:
    """
    Return the engine folder beside a bundle: `bundles/x` -> `bundles/x.fp16.engines`.

    Autoware keeps engines beside their ONNX with the precision in the file name.
    """
    bundle_path = Path(bundle_path)
    return bundle_path.parent / f'{bundle_path.name}.{precision}.engines'


def _aligned(nbytes: int) -> int:
    return -(-int(nbytes) // ALIGN) * ALIGN


def _io_names(trt, engine) -> tuple[list[str], list[str]]:
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    return inputs, [n for n in names if n not in inputs]


def _np_dtype(trt, engine, name: str) -> np.dtype:
    return np.dtype(trt.nptype(engine.get_tensor_dtype(name)))


def _set_shape(ctx, name: str, shape: tuple[int, ...], what: str) -> None:
    if not ctx.set_input_shape(name, shape):
        raise EngineError(f'{what}: the engine rejects {name} of shape {shape} (outside its '
                          'optimization profile): rebuild it with larger --max-* limits')


def _execute(ctx, handle, what: str) -> None:
    if not ctx.execute_async_v3(stream_handle=handle):
        raise EngineError(f'{what}: TensorRT execute_async_v3 failed (see the TensorRT log)')


class _VisionRunner:
    """vision engine, one frame: pixel_values -> image_embeds, buffers and shapes fixed at init."""

    def __init__(self, trt, engine, cuda, stream, alloc) -> None:
        self.cuda, self.stream, self.handle = cuda, stream, cuda.stream_handle(stream)
        inputs, outputs = _io_names(trt, engine)
        if inputs != ['pixel_values'] or 'image_embeds' not in outputs:
            raise EngineError(f'vision engine has inputs {inputs} / outputs {outputs}, expected '
                              'pixel_values -> image_embeds: rebuild it from this bundle')
        self.ctx = engine.create_execution_context()
        shape = tuple(engine.get_tensor_profile_shape('pixel_values', 0)[0])  # one frame's:
        # (1, 3, H, W), or (tiles, 3, H, W) where the profile's smallest batch is a frame's tiles
        _set_shape(self.ctx, 'pixel_values', shape, 'vision engine')
        self.in_shape = shape
        self.out = np.empty(tuple(self.ctx.get_tensor_shape('image_embeds')),
                            _np_dtype(trt, engine, 'image_embeds'))   # (1, n, C)
        self.in_dtype = _np_dtype(trt, engine, 'pixel_values')
        self.in_ptr = alloc(np.prod(shape) * self.in_dtype.itemsize)
        self.out_ptr = alloc(self.out.nbytes)
        self.ctx.set_tensor_address('pixel_values', self.in_ptr)
        self.ctx.set_tensor_address('image_embeds', self.out_ptr)

    def __call__(self, pixel_values: np.ndarray) -> np.ndarray:
        """(1 or tiles, 3, H, W) float32 -> (1 or tiles, n, C)."""
        if pixel_values.shape != self.in_shape:
            raise EngineError(f'vision engine takes {self.in_shape}, got {pixel_values.shape}: '
                              'engine and bundle preprocessing disagree: rebuild the engine')
        x = np.ascontiguousarray(pixel_values, dtype=self.in_dtype)
        self.cuda.h2d(self.in_ptr, x, self.stream)
        _execute(self.ctx, self.handle, 'vision engine')
        self.cuda.d2h(self.out, self.out_ptr, self.stream)
        self.cuda.sync(self.stream)
        return self.out


class TrtRunner:
    """One segment's engine (runner.SegmentRunner): two contexts, KV cache in ping-pong banks."""

    explicit_positions = True
    max_rows = 1                 # the decode profile takes one new row: no drafts

    def __init__(self, trt, engine, segment: Segment, cuda, stream, alloc, shape: DecoderShape,
                 max_prompt: int, max_total: int) -> None:
        """Check the engine's tensors against the segment and allocate its buffers once."""
        self.segment, self.cuda, self.stream = segment, cuda, stream
        self.handle = cuda.stream_handle(stream)
        self.kv, self.d, self.C = shape.num_kv_heads, shape.head_dim, shape.hidden_size
        self.max_prompt, self.max_length = max_prompt, max_total
        self.past_names, self.present_names = segment.past_names(), segment.present_names()
        inputs, outputs = _io_names(trt, engine)
        expected_in = [segment.input_name, ATTENTION_MASK, POSITION_IDS, *self.past_names]
        expected_out = [segment.output_name, *self.present_names]
        if segment.ranks:
            expected_out.append(LAST_TOKEN_ATTENTION)
        missing = [n for n in expected_in if n not in inputs] + \
            [n for n in expected_out if n not in outputs]
        if missing:
            more = '...' if len(missing) > 3 else ''
            raise EngineError(f'{segment.name} engine lacks {missing[:3]}{more} (blocks '
                              f'{segment.first}..{segment.stop - 1} of the bundle): rebuild it '
                              'from this bundle')
        if engine.num_optimization_profiles < 2:
            raise EngineError(f'{segment.name} engine has no prefill/decode profiles: rebuild it '
                              'with this version of ros2-gmskip build-engine')
        dt = {n: _np_dtype(trt, engine, n) for n in expected_in + expected_out}
        self.rows_dtype, self.pos_dtype = dt[segment.input_name], dt[POSITION_IDS]
        width = shape.vocab_size if segment.last else self.C
        self.out_dtype = dt[segment.output_name]
        # buffers at the largest shapes the profiles allow (batch 1)
        self.rows_ptr = alloc(max_prompt * self.C * self.rows_dtype.itemsize)
        self.pos_ptr = alloc(max_prompt * self.pos_dtype.itemsize)
        self.mask_ptr = alloc(max_total * dt[ATTENTION_MASK].itemsize)
        self.out_ptr = alloc(max_prompt * width * self.out_dtype.itemsize)
        self.width = width
        self.attention_dtype = dt.get(LAST_TOKEN_ATTENTION)
        self.attention_ptr = (alloc(max_total * self.attention_dtype.itemsize)
                              if segment.ranks else None)
        self.kv_item = max(dt[n].itemsize for n in self.past_names + self.present_names)
        self.kv_dtype = dt[self.past_names[0]]
        self.kv_bytes = _aligned(self.kv * max_total * self.d * self.kv_item)   # one K or V
        self.banks = [alloc(self.kv_bytes * len(self.past_names)) for _ in range(2)]
        self.bank, self.length = 0, 0
        cuda.h2d(self.mask_ptr, np.ones(max_total, dt[ATTENTION_MASK]), stream)  # all visible
        # one context per profile, fixed addresses set once
        self.ctx = [engine.create_execution_context() for _ in (PREFILL, DECODE)]
        for profile, ctx in enumerate(self.ctx):
            if not ctx.set_optimization_profile_async(profile, self.handle):
                raise EngineError(f'{segment.name} engine: cannot select optimization profile '
                                  f'{profile}')
            ctx.set_tensor_address(segment.input_name, self.rows_ptr)
            ctx.set_tensor_address(ATTENTION_MASK, self.mask_ptr)
            ctx.set_tensor_address(POSITION_IDS, self.pos_ptr)
            ctx.set_tensor_address(segment.output_name, self.out_ptr)
            if segment.ranks:
                ctx.set_tensor_address(LAST_TOKEN_ATTENTION, self.attention_ptr)
        cuda.sync(stream)

    def _kv_address(self, bank: int, i: int) -> int:
        return self.banks[bank] + i * self.kv_bytes

    def _execute(self, rows: np.ndarray, positions: np.ndarray, cached: int) -> int:
        """Run the new rows after `cached` cache rows (in the current bank); return T."""
        B, T, C = rows.shape                                              # (1, seq, C)
        assert B == 1 and C == self.C, rows.shape
        what = f'{self.segment.name} engine'
        if cached == 0:
            if T > self.max_prompt:
                raise EngineError(f"prompt of {T} tokens exceeds the engine's max prompt "
                                  f'{self.max_prompt}: rebuild with a larger --max-prompt')
            ctx, src, dst = self.ctx[PREFILL], 0, 1
        else:
            if cached + T > self.max_length:
                raise EngineError(f"{cached + T} tokens exceed the engine's limit "
                                  f'{self.max_length}: rebuild with larger --max-prompt / '
                                  '--max-new-tokens')
            ctx, src, dst = self.ctx[DECODE], self.bank, 1 - self.bank
        _set_shape(ctx, self.segment.input_name, (1, T, C), what)
        _set_shape(ctx, ATTENTION_MASK, (1, cached + T), what)
        _set_shape(ctx, POSITION_IDS, (1, T), what)
        past_shape = (1, self.kv, cached, self.d)                         # (1, kv, past, d)
        for i, (p, q) in enumerate(zip(self.past_names, self.present_names)):
            _set_shape(ctx, p, past_shape, what)
            ctx.set_tensor_address(p, self._kv_address(src, i))
            ctx.set_tensor_address(q, self._kv_address(dst, i))           # (1, kv, total, d)
        self.cuda.h2d(self.rows_ptr, np.ascontiguousarray(rows, self.rows_dtype), self.stream)
        self.cuda.h2d(self.pos_ptr, np.ascontiguousarray(positions, self.pos_dtype),
                      self.stream)
        _execute(ctx, self.handle, what)
        self.bank, self.length = dst, cached + T
        return T

    def _download(self, first: int, T: int) -> np.ndarray:
        """Rows first..T-1 of the main output -> host (1, T - first, width)."""
        out = np.empty((1, T - first, self.width), self.out_dtype)
        self.cuda.d2h(out, self.out_ptr + first * self.width * out.itemsize, self.stream)
        return out

    def prefill(self, rows: np.ndarray, positions: np.ndarray) -> Prefilled:
        """Start a request: the cache becomes `rows` (1, T, C); see runner.SegmentRunner."""
        T = self._execute(rows, positions, 0)
        out = self._download(T - 1 if self.segment.last else 0, T)
        attention = None
        if self.segment.ranks:
            attention = np.empty(T, self.attention_dtype)
            self.cuda.d2h(attention, self.attention_ptr, self.stream)
        self.cuda.sync(self.stream)
        return Prefilled(out.astype(np.float32, copy=False),
                         None if attention is None else attention.astype(np.float32))

    def run(self, rows: np.ndarray, positions: np.ndarray, cached: int) -> np.ndarray:
        """Append `rows` (1, n, C) after `cached` cache rows; return their outputs."""
        if cached != self.length:
            raise EngineError(f'{self.segment.name} engine: asked to run after {cached} cache '
                              f'rows, it holds {self.length} (one row per run: no drafts)')
        T = self._execute(rows, positions, cached)
        out = self._download(0, T)
        self.cuda.sync(self.stream)
        return out.astype(np.float32, copy=False)

    def compact(self, keep: np.ndarray) -> None:
        """Keep only the cache rows `keep`: each K / V tensor down to the host and back."""
        kept = []                          # host copies live until the stream is synchronised
        for i in range(len(self.past_names)):
            ptr = self._kv_address(self.bank, i)
            full = np.empty((1, self.kv, self.length, self.d), self.kv_dtype)
            self.cuda.d2h(full, ptr, self.stream)
            self.cuda.sync(self.stream)
            kept.append(np.ascontiguousarray(full[:, :, keep]))
            self.cuda.h2d(ptr, kept[-1], self.stream)
        self.cuda.sync(self.stream)
        self.length = len(keep)


class TrtBackend(BundleBackend):
    """Describe images with TensorRT engines built from an export bundle (`Backend`)."""

    name = 'tensorrt'

    def __init__(self, engine_dir: Path | None = None, bundle: Bundle | Path | None = None,
                 rebuild: bool = False, verify: bool = True, device: int = 0,
                 verbose: bool = False, *, engine: Path | None = None, build_only: bool = False,
                 precision: str = 'fp16', token_skip: TokenSkip | None = None) -> None:
        """
        Open (or build) the TensorRT engines of a bundle.

        `engine_dir` (alias `engine`, as `runtime.factory` passes it): the engine folder;
        None: `default_engine_dir(bundle, precision)`. `bundle`: a `Bundle` or folder; None: the
        one the engine manifest names. A folder without engines is built on first use (as
        Autoware's TensorRT nodes do; minutes); stale engines are refused unless `rebuild`.
        `build_only`: make sure the engines are built and stop there (no GPU buffers; describe
        raises), for the node's build_only parameter. `token_skip`: instead of the bundle's.
        """
        from ros2_gmskip.runtime.trt_engines import MANIFEST, needs_rebuild, read_engine_manifest
        from ros2_gmskip.runtime.trt_profiles import Limits

        engine_dir = engine_dir if engine_dir is not None else engine
        trt = import_tensorrt()
        self.cuda = cuda_runtime()
        self.cuda.set_device(device)
        self._pointers: list[int] = []
        self.stream = None
        self.build_only = build_only
        if bundle is None:
            if engine_dir is None:
                raise EngineError('the tensorrt backend needs an engine folder (--engine) or a '
                                  'bundle (--bundle) to build one from')
            bundle = Path(read_engine_manifest(Path(engine_dir))['bundle_path'])
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(Path(bundle), verify)
        m = self.bundle.manifest
        check_tensorrt(m, self.bundle.where())
        self.engine_dir = Path(engine_dir) if engine_dir is not None else \
            default_engine_dir(self.bundle.path, precision)
        gpu = self.cuda.device_info(device)
        reason = needs_rebuild(self.engine_dir, trt.__version__, gpu.name, gpu.compute_capability,
                               bundle=self.bundle, verify=verify)
        if reason:
            first_build = not (self.engine_dir / MANIFEST).is_file()
            if not (rebuild or first_build):
                raise EngineError(reason)
            from ros2_gmskip.runtime.trt_build import build_engines, BuildConfig
            log.warning('%s: %s', reason, 'building them now (minutes)' if first_build else
                        'rebuilding (rebuild=True)')
            config = (BuildConfig(precision=precision) if first_build else
                      BuildConfig.from_stale_manifest(self.engine_dir))
            build_engines(self.bundle, self.engine_dir, config, gpu=gpu)
        manifest = read_engine_manifest(self.engine_dir)
        self.token_skip = m.token_skip if token_skip is None else token_skip
        info = {'backend': self.name, 'model_id': m.model_id, 'plan_id': m.plan_id,
                'engine_id': str(manifest.get('cache_key') or ''),
                'blocks_removed': tuple(m.blocks_removed), 'num_layers': m.decoder.num_layers,
                'tokens': self.token_skip, 'decoder_graph': 'tensorrt engines',
                'device': str(gpu)}
        if build_only:
            self.info = BackendInfo(**info, details={'engine_dir': str(self.engine_dir),
                                                     'build_only': True})
            log.info('tensorrt backend: engines in %s are ready (build_only)', self.engine_dir)
            return
        limits = Limits.from_dict(manifest['limits'])
        self._load_parts()                       # embed_table, preprocess, tokenizer
        self.logger = make_logger(trt, verbose)
        self.runtime = trt.Runtime(self.logger)
        self.stream = self.cuda.stream()
        try:
            engines = {g: self._deserialize(self.engine_dir / e['file'])
                       for g, e in manifest['engines'].items()}
            missing = [s.name for s in m.segments if s.name not in engines]
            if 'vision' not in engines or missing:
                raise EngineError(f'engine {self.engine_dir} has no engine for '
                                  f'{missing or ["vision"]}: rebuild it from this bundle')
            self.vision = _VisionRunner(trt, engines['vision'], self.cuda, self.stream,
                                        self._alloc)
            self.runners = [TrtRunner(trt, engines[seg.name], seg, self.cuda, self.stream,
                                      self._alloc, m.decoder, limits.max_prompt,
                                      limits.max_total) for seg in m.segments]
        except BaseException:
            self.close()
            raise
        self.rung_loops = self._rung_loops(self.runners, lambda runners, rung: DecodeLoop(
            runners, self.embed_table, self.tokenizer.stop_ids, self.token_skip,
            where=f'engine {self.engine_dir}',
            too_long='ask for fewer new tokens or rebuild with larger --max-prompt / '
                     '--max-new-tokens'))      # a ladder bundle: one loop per rung
        self.decoder_loop = self.rung_loops[self.ladder.plan_rung if self.ladder else 0]
        self.info = BackendInfo(**info, details={
            'bundle': str(self.bundle.path), 'engine_dir': str(self.engine_dir),
            'precision': manifest['precision'], 'tensorrt_version': trt.__version__,
            'limits': limits.to_dict()})
        log.info('tensorrt backend: %s (%s, TensorRT %s on %s), %d decoder layers in %d '
                 'segment(s)', self.engine_dir, manifest['precision'], trt.__version__, gpu,
                 m.decoder.num_layers, len(m.segments))

    def _alloc(self, nbytes: int) -> int:
        """Device memory, 256-byte aligned size, freed by `close` (also after a failed init)."""
        ptr = self.cuda.malloc(_aligned(nbytes))
        self._pointers.append(ptr)
        return ptr

    def _deserialize(self, path: Path):
        engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise EngineError(f'engine {path} cannot be deserialized by this TensorRT (see the '
                              f'TensorRT log): rebuild with ros2-gmskip build-engine '
                              f'{self.bundle.path} --out {self.engine_dir}')
        return engine

    def close(self) -> None:
        """Free the device buffers and the stream (also done when the backend is collected)."""
        pointers, self._pointers = getattr(self, '_pointers', []), []
        for ptr in pointers:
            try:
                self.cuda.free(ptr)
            except EngineError as err:      # freeing on the way out: log, never mask an error
                log.warning('%s', err)
        stream, self.stream = getattr(self, 'stream', None), None
        if stream is not None:
            self.cuda.destroy_stream(stream)

    def __enter__(self) -> 'TrtBackend':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: CUDA may be gone already
            pass

    def image_embeds(self, pixel_values: np.ndarray) -> np.ndarray:
        """Vision engine: (1, 3, H, W) -> (1, n_image_tokens, C)."""
        return self.vision(pixel_values)

    def _check_ready(self) -> None:
        if self.build_only:
            raise EngineError(f'the tensorrt backend on {self.engine_dir} was created with '
                              'build_only: it builds engines and runs nothing')
