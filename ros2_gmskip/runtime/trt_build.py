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
Build TensorRT engines from an export bundle: one engine per ONNX graph, plus their manifest.

    config = BuildConfig(precision='fp16', limits=Limits(max_prompt=256))
    manifest = build_engines(load_bundle(Path('bundle')), Path('engines/orin-fp16'), config)

Per graph, the steps of TensorRT's Python samples (each call checked against the TensorRT 10 API):

    network   builder.create_network(flags)       STRONGLY_TYPED for int8 (explicit Q/DQ), else 0
    parse     OnnxParser.parse_from_file           on failure every parser error is logged, then
                                                   EngineError; network inputs/outputs are logged
    config    set_memory_pool_limit(WORKSPACE)     --workspace-mb
              set_flag(FP16 | BF16)                warn when the GPU lacks fast fp16 / bf16 / int8
              default_device_type, DLA_core,       --dla-core: the vision graph only, GPU_FALLBACK
              GPU_FALLBACK
              add_optimization_profile             vision: 1; decoder: prefill + decode
              create/set_timing_cache              loaded from --timing-cache, saved after
    build     build_serialized_network
    write     <graph>.<precision>.engine           atomically (temp file + rename), sha256'd

and finally `engine_manifest.json` (last, so a folder without a manifest is an unfinished build).

Precisions. fp16 / bf16: a weakly typed network with the FP16 / BF16 builder flag - TensorRT keeps
fp32 where a layer is faster or only exists in fp32 (the exported graphs are fp32). fp32: no flag,
and TF32 off so the engine is the fp32 reference. int8: TensorRT 10 builds INT8 from *explicitly
quantized* graphs (QuantizeLinear/DequantizeLinear nodes) in a strongly typed network, with no
precision flags; its calibrators (IInt8EntropyCalibrator2 ...) are deprecated since 10.1 and gone
in 11. So a graph without Q/DQ nodes is refused with what to do (quantize the ONNX with NVIDIA
ModelOpt) instead of silently building an uncalibrated or fp32 engine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
import json
import logging
from pathlib import Path
import time
from typing import Any

from ros2_gmskip.errors import EngineError
from ros2_gmskip.folders import write_file
from ros2_gmskip.runtime import trt_engines as em
from ros2_gmskip.runtime.trt_backend import gpu_info, GpuInfo, import_tensorrt, make_logger
from ros2_gmskip.runtime.trt_profiles import (
    build_profiles,
    cache_key,
    engine_file_name,
    graph_names,
    Limits,
    parse_precision,
    Precision,
    Profile,
    profiles_to_dict,
    VISION,
)

log = logging.getLogger(__name__)

# Compute capabilities with fast native math per precision (CUDA's arithmetic-throughput table):
# fp16 on sm_53/60/62 and Volta+ (not sm_61 GeForce Pascal), int8 dp4a on sm_61 and Volta+, bf16
# on Ampere+.
FAST = {Precision.FP16: (('5.3', '6.0', '6.2'), '7.0'), Precision.INT8: (('6.1',), '7.0'),
        Precision.BF16: ((), '8.0')}


@dataclass
class BuildConfig:
    """How to build (`ros2-gmskip build-engine` options)."""

    precision: Precision = Precision.FP16
    workspace_mb: int = 4096              # builder scratch memory limit (MemoryPoolType.WORKSPACE)
    dla_core: int | None = None           # Jetson DLA core for the vision graph; None: GPU only
    limits: Limits = field(default_factory=Limits)
    timing_cache: Path | None = None      # read before, written after each graph's build
    prompt_len: int | None = None         # prompt the profiles are tuned for; None: the default
    verbose: bool = False                 # TensorRT INFO/VERBOSE messages at INFO

    def __post_init__(self) -> None:
        self.precision = parse_precision(self.precision)
        if self.workspace_mb < 1:
            raise EngineError(f'--workspace-mb must be positive, got {self.workspace_mb}')
        if self.dla_core is not None and self.dla_core < 0:
            raise EngineError(f'--dla-core must be >= 0, got {self.dla_core}')

    @classmethod
    def from_stale_manifest(cls, engine_dir: Path) -> 'BuildConfig':
        """
        Return the settings of the engines in `engine_dir`, to rebuild them alike.

        The defaults where its manifest is missing or unreadable.
        """
        try:
            m = json.loads((Path(engine_dir) / em.MANIFEST).read_text())
            return cls(precision=m['precision'], workspace_mb=int(m['workspace_mb']),
                       dla_core=m.get('dla_core'), limits=Limits.from_dict(m['limits']),
                       prompt_len=m.get('prompt_len'))
        except (OSError, ValueError, KeyError, TypeError, EngineError):
            return cls()


def default_prompt_len(bundle) -> int:
    """Tokens of the default prompt (image tokens included): what the profiles are tuned for."""
    from ros2_gmskip.runtime.tokenizer import PromptTokenizer
    from ros2_gmskip.runtime.results import DEFAULT_PROMPT
    return int(len(PromptTokenizer.from_bundle(bundle).prompt_ids(DEFAULT_PROMPT)))


def _has_fast(precision: Precision, cc: str | None) -> bool | None:
    """Whether compute capability `cc` ('8.7') runs `precision` natively fast; None if unknown."""
    if cc is None:
        return None
    exact, minimum = FAST[precision]

    def key(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in v.split('.'))
    return cc in exact or key(cc) >= key(minimum)


def check_precision_support(trt, builder, precision: Precision, gpu: GpuInfo) -> None:
    """
    Warn when the GPU has no fast path for `precision`; EngineError if TensorRT cannot build it.

    On a warning the build still runs: TensorRT falls back to fp32 kernels.
    """
    if precision is Precision.FP32:
        return
    if precision in (Precision.FP16, Precision.BF16):
        flag = precision.name
        if not hasattr(trt.BuilderFlag, flag):
            raise EngineError(f'TensorRT {trt.__version__} has no {flag} builder flag (strongly '
                              'typed builds only): export a bundle in that precision or use '
                              '--precision fp32')
    # Builder.platform_has_fast_fp16/int8 are deprecated in 10.5 ("query CUDA directly"): use the
    # compute capability when known, the builder's answer otherwise.
    fast = _has_fast(precision, gpu.compute_capability)
    if fast is None:
        attr = {Precision.FP16: 'platform_has_fast_fp16',
                Precision.INT8: 'platform_has_fast_int8'}.get(precision)
        fast = getattr(builder, attr, True) if attr else True
    if not fast:
        log.warning('%s has no fast %s (sm_%s or newer has): the engine will build but may be no '
                    'faster than fp32', gpu, precision.value, FAST[precision][1].replace('.', ''))


def network_flags(trt, precision: Precision) -> int:
    """STRONGLY_TYPED for int8 (explicit quantization, TensorRT 10's way), else none."""
    if precision is Precision.INT8:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def parse_onnx(trt, builder, logger, onnx_path: Path, flags: int):
    """
    Parse `onnx_path` -> (network, parser).

    On failure every parser error is logged, then EngineError with the count and the first
    error. The parser is returned because the network's weights belong to it (keep it alive
    until the build is done).
    """
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        for i, error in enumerate(errors):
            log.error('%s: ONNX parser error %d/%d: %s', onnx_path.name, i + 1, len(errors), error)
        first = errors[0].splitlines()[0] if errors else 'no error reported'
        raise EngineError(f'TensorRT {trt.__version__} cannot parse {onnx_path} ({len(errors)} '
                          f'error(s), first: {first}): check the opset / ops with ros2-gmskip '
                          'export (its TensorRT op lint) or use a newer TensorRT')
    return network, parser


def log_network_io(network, graph: str) -> None:
    """One line per network input and output: name, shape (-1 = dynamic), dtype."""
    for kind, count, get in (('input', network.num_inputs, network.get_input),
                             ('output', network.num_outputs, network.get_output)):
        for i in range(count):
            t = get(i)
            log.info('%s %-6s %-28s shape %-24s %s', graph, kind, t.name, tuple(t.shape), t.dtype)


def has_qdq(trt, network) -> bool:
    """Whether the parsed network has Quantize/Dequantize layers (explicit quantization)."""
    qdq = (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
    return any(network.get_layer(i).type in qdq for i in range(network.num_layers))


def add_profiles(builder, config, network, profiles: list[Profile], graph: str) -> None:
    """One IOptimizationProfile per `Profile`, every dynamic network input covered."""
    inputs = {network.get_input(i).name: tuple(network.get_input(i).shape)
              for i in range(network.num_inputs)}
    for profile in profiles:
        unknown = sorted(set(profile.shapes) - set(inputs))
        uncovered = sorted(n for n, s in inputs.items() if -1 in s and n not in profile.shapes)
        if unknown or uncovered:
            raise EngineError(f'{graph}.onnx and the bundle manifest disagree (inputs not in the '
                              f'graph: {unknown}, dynamic inputs without a profile: {uncovered}): '
                              're-run ros2-gmskip export')
        p = builder.create_optimization_profile()
        for name, r in profile.shapes.items():
            p.set_shape(name, r.min_shape, r.opt_shape, r.max_shape)
            log.debug('%s profile %s: %s min %s opt %s max %s', graph, profile.name, name,
                      r.min_shape, r.opt_shape, r.max_shape)
        index = config.add_optimization_profile(p)
        if index < 0:
            raise EngineError(f'{graph}: TensorRT rejected optimization profile {profile.name!r} '
                              f'({profile.to_dict()["shapes"]})')
        log.info('%s profile %d %r: %s', graph, index, profile.name,
                 ', '.join(f'{n} {r.min_shape}..{r.max_shape}'
                           for n, r in profile.shapes.items() if r.min_shape != r.max_shape))


def attach_timing_cache(config, path: Path | None):
    """Return the timing cache from `path` (a new one if absent, or from another TensorRT/GPU)."""
    blob = path.read_bytes() if path is not None and path.is_file() else b''
    cache = config.create_timing_cache(blob)
    if not config.set_timing_cache(cache, False):
        log.warning('timing cache %s was made by another TensorRT or GPU: starting a new one',
                    path)
        cache = config.create_timing_cache(b'')
        config.set_timing_cache(cache, False)
    elif blob:
        log.info('timing cache %s: %d bytes loaded', path, len(blob))
    return cache


def save_timing_cache(config, path: Path | None) -> None:
    if path is None:
        return
    cache = config.get_timing_cache()
    if cache is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    data = memoryview(cache.serialize())
    write_file(path, data, 'timing cache')
    log.info('timing cache %s: %d bytes saved', path, data.nbytes)


def configure(trt, builder, network, cfg: BuildConfig, graph: str, gpu: GpuInfo):
    """Return the IBuilderConfig of one graph: workspace, precision, DLA, timing cache."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, cfg.workspace_mb << 20)
    if cfg.precision is Precision.FP16:
        config.set_flag(trt.BuilderFlag.FP16)
    elif cfg.precision is Precision.BF16:
        config.set_flag(trt.BuilderFlag.BF16)
    elif cfg.precision is Precision.FP32:
        config.clear_flag(trt.BuilderFlag.TF32)       # the fp32 reference: no TF32 matmuls
    elif not has_qdq(trt, network):                   # int8: explicit quantization only
        raise EngineError(f'--precision int8: {graph}.onnx has no QuantizeLinear/DequantizeLinear '
                          'nodes; TensorRT 10 builds INT8 from explicitly quantized graphs (its '
                          "calibrators are deprecated since 10.1): quantize the bundle's ONNX "
                          'with NVIDIA ModelOpt (modelopt.onnx.quantization, int8) or use '
                          '--precision fp16')
    if cfg.dla_core is not None and graph == VISION:
        cores = int(getattr(builder, 'num_DLA_cores', 0))
        if cfg.dla_core >= cores:
            raise EngineError(f'--dla-core {cfg.dla_core}: {gpu} has {cores} DLA core(s) (DLA is '
                              'on Jetson AGX/NX Orin and Xavier): drop --dla-core')
        if cfg.precision not in (Precision.FP16, Precision.INT8):
            raise EngineError(f'--dla-core needs --precision fp16 or int8 (DLA has no '
                              f'{cfg.precision.value})')
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = cfg.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)   # layers DLA cannot run stay on the GPU
        log.info('vision graph on DLA core %d (GPU fallback on)', cfg.dla_core)
    return config


def build_graph(trt, builder, logger, onnx_path: Path, graph: str, profiles: list[Profile],
                cfg: BuildConfig, gpu: GpuInfo):
    """Build the serialized engine (IHostMemory) of one graph."""
    flags = network_flags(trt, cfg.precision)
    network, parser = parse_onnx(trt, builder, logger, onnx_path, flags)
    log_network_io(network, graph)
    config = configure(trt, builder, network, cfg, graph, gpu)
    add_profiles(builder, config, network, profiles, graph)
    cache = attach_timing_cache(config, cfg.timing_cache)
    t0 = time.perf_counter()
    log.info('building %s engine (%s, workspace %d MiB): this can take minutes', graph,
             cfg.precision.value, cfg.workspace_mb)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(f'TensorRT could not build the {graph} engine (see the TensorRT errors '
                          'above; too small a --workspace-mb or an unsupported layer are the '
                          'usual causes)')
    log.info('%s engine built in %.1f s', graph, time.perf_counter() - t0)
    save_timing_cache(config, cfg.timing_cache)
    del cache, parser
    return serialized


def _source(graph: str) -> str:
    """Return the bundle file an engine is built from (vision.onnx, decoder.1.onnx, ...)."""
    return f'{graph}.onnx'


def build_engines(bundle: Any, out_dir: Path, cfg: BuildConfig | None = None, *,
                  gpu: GpuInfo | None = None, graphs: tuple[str, ...] | None = None) -> dict:
    """
    Build the graphs of `bundle` (a `Bundle`) into `out_dir`; return the written manifest.

    `graphs`: vision and every decoder segment (decoder, decoder.1, ...) unless given.
    """
    cfg = cfg or BuildConfig()
    graphs = graphs or graph_names(bundle.manifest)
    trt = import_tensorrt()
    gpu = gpu or gpu_info()
    out_dir = Path(out_dir)
    prompt_len = cfg.prompt_len or default_prompt_len(bundle)
    profiles = build_profiles(bundle.manifest, cfg.limits, prompt_len)   # limits checked first
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / em.MANIFEST).unlink(missing_ok=True)      # an interrupted rebuild reads as unbuilt
    logger = make_logger(trt, cfg.verbose)
    builder = trt.Builder(logger)
    check_precision_support(trt, builder, cfg.precision, gpu)
    log.info('TensorRT %s on %s: building %s into %s', trt.__version__, gpu, ', '.join(graphs),
             out_dir)
    engines: dict[str, dict] = {}
    for graph in graphs:
        source = _source(graph)
        serialized = build_graph(trt, builder, logger, bundle.file(source), graph,
                                 profiles[graph], cfg, gpu)
        data = memoryview(serialized)
        name = engine_file_name(graph, cfg.precision)
        write_file(out_dir / name, data, 'engine file')
        engines[graph] = {'file': name, 'sha256': em.sha256_bytes(data),
                          'source_onnx': source,
                          'source_onnx_sha256': bundle.manifest.files[source]}
        log.info('wrote %s (%.1f MiB)', out_dir / name, data.nbytes / 2**20)
        del serialized, data
    key = cache_key(source_onnx_sha256={g: e['source_onnx_sha256'] for g, e in engines.items()},
                    precision=cfg.precision, limits=cfg.limits, prompt_len=prompt_len,
                    tensorrt_version=trt.__version__,
                    compute_capability=gpu.compute_capability, dla_core=cfg.dla_core)
    manifest = em.make_engine_manifest(
        bundle=bundle, engines=engines, tensorrt_version=trt.__version__, gpu_name=gpu.name,
        compute_capability=gpu.compute_capability, precision=cfg.precision.value,
        profiles=profiles_to_dict({g: profiles[g] for g in graphs}),
        limits=cfg.limits.to_dict(), prompt_len=prompt_len, workspace_mb=cfg.workspace_mb,
        dla_core=cfg.dla_core, cache_key=key)
    em.write_engine_manifest(out_dir, manifest)
    log.info('wrote %s (engine id %s)', out_dir / em.MANIFEST, key)
    return manifest


def planned_cache_key(bundle: Any, cfg: BuildConfig, trt_version: str, gpu: GpuInfo) -> str:
    """
    Return the cache key a build of `bundle` with `cfg` on this machine would get.

    It lets an up-to-date build be skipped without building.
    """
    prompt_len = cfg.prompt_len or default_prompt_len(bundle)
    return cache_key(source_onnx_sha256={g: bundle.manifest.files[_source(g)]
                                         for g in graph_names(bundle.manifest)},
                     precision=cfg.precision, limits=cfg.limits, prompt_len=prompt_len,
                     tensorrt_version=trt_version, compute_capability=gpu.compute_capability,
                     dla_core=cfg.dla_core)
