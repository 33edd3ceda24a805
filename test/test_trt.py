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
TensorRT engines: profiles, names, engine manifests, the builder and the backend.

Everything up to the real-GPU class runs without TensorRT: a small stand-in `tensorrt` module
(and a stand-in CUDA with host memory behind fake device pointers) is injected where the builder
and the backend import theirs, so their control flow - parser errors, profiles, flags, timing
cache, files, manifest checks, buffers, the KV-cache ping-pong - is exercised here. Real TensorRT
tests skip unless `tensorrt` and a CUDA GPU are present.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
import sys
import types

import numpy as np
import pytest
from ros2_gmskip import cli
from ros2_gmskip.bundle_format import Bundle, FORMAT, load_bundle, Manifest
from ros2_gmskip.errors import EngineError
from ros2_gmskip.runtime import trt_backend, trt_build, trt_engines as em
from ros2_gmskip.runtime.trt_backend import GpuInfo
from ros2_gmskip.runtime.trt_profiles import (
    build_profiles,
    cache_key,
    decoder_profiles,
    engine_file_name,
    Limits,
    Precision,
    Profile,
    profiles_from_dict,
    profiles_to_dict,
    ShapeRange,
    vision_profiles,
)

L, KV, D, C, V, N_IMG, H = 2, 2, 4, 8, 11, 4, 16        # tiny decoder / vision shapes
ORIN = GpuInfo('NVIDIA Orin', '8.7')
TRT_MISSING_LINE = ('error: TensorRT is not installed (pip/apt package python3-libnvinfer / '
                    'tensorrt); ')


PLAIN = ((0, L, False),)                 # (first, stop, ranks) of each decoder segment
SPLIT = ((0, 1, True), (1, L, False))    # FastV K = 1: the first segment ranks


def _t(name, shape, dtype='float32'):
    return {'name': name, 'shape': list(shape), 'dtype': dtype, 'atol': None}


def graphs_entry(segments=PLAIN) -> dict:
    """Return the bundle manifest's `graphs`, as ros2_gmskip.exporters.export_config writes it."""
    graphs = {'vision': {'inputs': [_t('pixel_values', ['batch', 3, H, H])],
                         'outputs': [_t('image_embeds', ['batch', N_IMG, C])]}}
    for index, (first, stop, ranks) in enumerate(segments):
        last = stop == L
        dec_in = [_t('inputs_embeds' if first == 0 else 'inputs_hidden', ['batch', 'seq', C]),
                  _t('attention_mask', ['batch', 'total'], 'int64'),
                  _t('position_ids', ['batch', 'seq'], 'int64')]
        dec_out = [_t('logits', ['batch', 'seq', V]) if last else
                   _t('hidden_states', ['batch', 'seq', C])]
        if ranks:
            dec_out.append(_t('last_token_attention', ['batch', 'total']))
        for i in range(first, stop):
            for kind in ('key', 'value'):
                dec_in.append(_t(f'past_key_values.{i}.{kind}', ['batch', KV, 'past', D]))
                dec_out.append(_t(f'present.{i}.{kind}', ['batch', KV, 'total', D]))
        graphs['decoder' if index == 0 else f'decoder.{index}'] = {'inputs': dec_in,
                                                                   'outputs': dec_out}
    return graphs


def manifest_dict(files: dict, segments=PLAIN, token_skip=None) -> dict:
    """Return a bundle manifest (the current format) for the toy shapes, listing `files`."""
    return {
        'format': FORMAT, 'created_at': 'now',
        'source_model': {'path': '/m', 'sha256': 'ab' * 32}, 'plan': None, 'opset': 17,
        'files': files, 'graphs': graphs_entry(segments),
        'tokens': {'image_token': '<image>', 'image_token_id': 1, 'num_image_tokens': N_IMG,
                   'prompt_template': '<image> <image> <image> <image> user: {prompt} bot:',
                   'stop_token_ids': [2], 'bos_token_id': None, 'eos_token_id': 2,
                   'pad_token_id': None, 'add_special_tokens': False,
                   'clean_up_tokenization_spaces': False},
        'preprocess': {'size': [H, H], 'resample': 'bilinear', 'rescale_factor': 1 / 255,
                       'image_mean': [0.5] * 3, 'image_std': [0.5] * 3, 'shortest_edge': None,
                       'tiles': None},
        'decoder': {'num_layers': L, 'num_heads': KV, 'num_kv_heads': KV, 'head_dim': D,
                    'hidden_size': C, 'vocab_size': V, 'rope_theta': None, 'family': 'llava',
                    'decoder_type': 'llama'},
        'token_skip': token_skip,
        'segments': [{'first': first, 'stop': stop, 'last': stop == L, 'ranks': ranks,
                      'portable': 'decoder.onnx' if i == 0 else f'decoder.{i}.onnx',
                      'fused': None, 'fused_prefill': None, 'fused_step': None}
                     for i, (first, stop, ranks) in enumerate(segments)],
        'fused': None, 'mrope': None, 'draft': None, 'validation': None, 'versions': {},
        'ladder': None,
    }


def fake_manifest() -> Manifest:
    return Manifest.from_dict(manifest_dict({}))


# --- profiles and names (values by hand) ------------------------------------------------------

def test_vision_profile_batch_range_and_fixed_image_size():
    [p] = vision_profiles(fake_manifest(), Limits(max_batch=4))
    assert p.name == 'vision'
    assert p.shapes == {'pixel_values': ShapeRange((1, 3, H, H), (1, 3, H, H), (4, 3, H, H))}


def test_decoder_prefill_and_decode_profiles_by_hand():
    prefill, decode = decoder_profiles(fake_manifest(), Limits(2, 16, 6), prompt_len=10)
    assert (prefill.name, decode.name) == ('prefill', 'decode')
    s = prefill.shapes
    assert s['inputs_embeds'] == ShapeRange((1, 1, C), (1, 10, C), (2, 16, C))
    assert s['position_ids'] == ShapeRange((1, 1), (1, 10), (2, 16))
    assert s['attention_mask'] == ShapeRange((1, 1), (1, 10), (2, 16))      # total = 0 + seq
    assert s['past_key_values.1.value'] == ShapeRange((1, KV, 0, D), (1, KV, 0, D),
                                                      (2, KV, 0, D))       # empty KV cache
    s = decode.shapes
    assert s['inputs_embeds'] == ShapeRange((1, 1, C), (1, 1, C), (2, 1, C))
    assert s['position_ids'] == ShapeRange((1, 1), (1, 1), (2, 1))
    # past 1 / 10 + 6 // 2 / 16 + 6; total = past + 1
    assert s['past_key_values.0.key'] == ShapeRange((1, KV, 1, D), (1, KV, 13, D), (2, KV, 22, D))
    assert s['attention_mask'] == ShapeRange((1, 2), (1, 14), (2, 23))
    assert set(s) == {i['name'] for i in graphs_entry()['decoder']['inputs']}
    assert Limits(2, 16, 6).max_total == 23


def test_prompt_longer_than_max_prompt_is_refused_with_the_fix():
    with pytest.raises(EngineError, match=r'raise --max-prompt to at least 140'):
        decoder_profiles(fake_manifest(), Limits(max_prompt=128), prompt_len=140)
    with pytest.raises(EngineError, match='image tokens'):
        decoder_profiles(fake_manifest(), Limits(), prompt_len=N_IMG - 1)


def test_unknown_dynamic_axis_and_missing_graph_are_refused():
    m = manifest_dict({})
    m['graphs']['vision']['inputs'][0]['shape'] = ['batch', 3, 'height', H]
    with pytest.raises(EngineError, match="'height'"):
        vision_profiles(Manifest.from_dict(m), Limits())
    m['graphs'].pop('decoder')
    with pytest.raises(EngineError, match='no inputs for the decoder graph'):
        decoder_profiles(Manifest.from_dict(m), Limits(), 10)


def test_engine_file_names_carry_the_precision():
    assert engine_file_name('decoder', 'fp16') == 'decoder.fp16.engine'
    assert engine_file_name('vision', Precision.INT8) == 'vision.int8.engine'
    with pytest.raises(EngineError, match='unknown precision'):
        engine_file_name('vision', 'fp8')
    with pytest.raises(EngineError, match='unknown graph'):
        engine_file_name('text', 'fp16')
    with pytest.raises(EngineError, match='max-batch must be a positive integer'):
        Limits(max_batch=0)


def test_profiles_round_trip_and_cache_key_tracks_every_setting():
    profiles = build_profiles(fake_manifest(), Limits(1, 32, 8), 12)
    assert profiles_from_dict(json.loads(json.dumps(profiles_to_dict(profiles)))) == profiles
    base = {'source_onnx_sha256': {'vision': 'a', 'decoder': 'b'}, 'precision': 'fp16',
            'limits': Limits(), 'prompt_len': 12, 'tensorrt_version': '10.3.0',
            'compute_capability': '8.7', 'dla_core': None}
    key = cache_key(**base)
    assert key == cache_key(**base) and len(key) == 16
    for change in ({'source_onnx_sha256': {'vision': 'a', 'decoder': 'c'}}, {'precision': 'fp32'},
                   {'limits': Limits(max_batch=2)}, {'prompt_len': 13},
                   {'tensorrt_version': '10.8.0'}, {'compute_capability': '9.0'},
                   {'dla_core': 0}):
        assert cache_key(**{**base, **change}) != key, change


# --- engine manifests -------------------------------------------------------------------------

def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bundle(folder: Path, tokenizer: bool = False, segments=PLAIN,
                 token_skip=None) -> Bundle:
    """Write a bundle folder with its manifest (files hashed); the graphs are fake-ONNX JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {'vision.onnx': json.dumps(fake_onnx('vision', segments)).encode()}
    for i in range(len(segments)):
        name = 'decoder' if i == 0 else f'decoder.{i}'
        files[f'{name}.onnx'] = json.dumps(fake_onnx(name, segments)).encode()
    rng = np.random.default_rng(0)
    np.save(folder / 'embed_tokens.npy', rng.normal(size=(V, C)).astype(np.float32))
    files['embed_tokens.npy'] = (folder / 'embed_tokens.npy').read_bytes()
    files['tokenizer.json'] = make_tokenizer_json() if tokenizer else b'{}'
    for name, data in files.items():
        (folder / name).write_bytes(data)
    manifest = manifest_dict({name: sha(data) for name, data in files.items()}, segments,
                             token_skip)
    (folder / 'manifest.json').write_text(json.dumps(manifest))
    return load_bundle(folder)


VOCAB = ['<unk>', '<image>', '</s>', 'user:', 'bot:', 'describe', 'the', 'scene', '.', 'a', 'car']


def make_tokenizer_json() -> bytes:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token='<unk>'))
    tok.pre_tokenizer = WhitespaceSplit()
    return tok.to_str().encode()


@pytest.fixture
def built(tmp_path):
    """Return (bundle, engine_dir): two fake engines and a manifest for Orin / TensorRT 10.3.0."""
    bundle = write_bundle(tmp_path / 'bundle')
    engine_dir = tmp_path / 'engines'
    engine_dir.mkdir()
    engines = {}
    for graph in ('vision', 'decoder'):
        name = engine_file_name(graph, 'fp16')
        data = f'engine {graph}'.encode()
        (engine_dir / name).write_bytes(data)
        engines[graph] = {'file': name, 'sha256': sha(data), 'source_onnx': f'{graph}.onnx',
                          'source_onnx_sha256': bundle.manifest.files[f'{graph}.onnx']}
    manifest = em.make_engine_manifest(
        bundle=bundle, engines=engines, tensorrt_version='10.3.0', gpu_name=ORIN.name,
        compute_capability=(8, 7), precision='fp16',
        profiles=profiles_to_dict(build_profiles(bundle.manifest, Limits(), 10)),
        limits=Limits().to_dict(), prompt_len=10, workspace_mb=4096, dla_core=None,
        cache_key='k' * 16)
    em.write_engine_manifest(engine_dir, manifest)
    return bundle, engine_dir


def check(engine_dir, bundle=None, version='10.3.0', gpu=ORIN.name, cc='8.7'):
    return em.check_engine_manifest(engine_dir, version, gpu, cc, bundle=bundle)


def test_manifest_written_read_and_checked(built):
    bundle, engine_dir = built
    manifest = check(engine_dir, bundle)
    assert manifest['format'] == 'ros2_gmskip/trt-engines@1'
    assert manifest['gpu'] == {'name': 'NVIDIA Orin', 'compute_capability': '8.7'}
    assert manifest['bundle_manifest_sha256'] == sha((bundle.path / 'manifest.json').read_bytes())
    assert set(manifest) >= set(em.REQUIRED_KEYS)
    assert em.read_engine_manifest(engine_dir) == manifest
    assert check(engine_dir, bundle.path) == manifest                   # a bundle folder works too
    assert em.needs_rebuild(engine_dir, '10.3.0', ORIN.name, '8.7', bundle) is None
    assert not [p for p in engine_dir.iterdir() if p.name.endswith('.tmp')]


def test_other_tensorrt_and_gpu_give_autoware_style_line(built):
    bundle, engine_dir = built
    with pytest.raises(EngineError) as err:
        check(engine_dir, bundle, version='10.8.0', gpu='NVIDIA H100', cc=(9, 0))
    assert str(err.value) == (
        f'engine {engine_dir} was built with TensorRT 10.3.0 for NVIDIA Orin (sm_87); this is '
        f'TensorRT 10.8.0 on NVIDIA H100 (sm_90): rebuild with ros2-gmskip build-engine '
        f'{bundle.path} --out {engine_dir}')
    assert '\n' not in str(err.value)


@pytest.mark.parametrize('field, kwargs', [
    ('TensorRT', {'version': '10.3.1'}),
    ('GPU name', {'gpu': 'NVIDIA Jetson Orin Nano'}),
    ('compute capability', {'cc': 'sm_72'}),
])
def test_each_machine_mismatch_alone_is_refused(built, field, kwargs):
    bundle, engine_dir = built
    with pytest.raises(EngineError, match='was built with TensorRT 10.3.0 for NVIDIA Orin'):
        check(engine_dir, bundle, **kwargs)
    assert em.needs_rebuild(engine_dir, kwargs.get('version', '10.3.0'),
                            kwargs.get('gpu', ORIN.name), kwargs.get('cc', '8.7'), bundle)


def test_unknown_gpu_checks_the_version_only(built, caplog):
    bundle, engine_dir = built
    with caplog.at_level(logging.WARNING):
        check(engine_dir, bundle, gpu=None, cc=None)
    assert 'the GPU of this machine is not known' in caplog.text
    path = engine_dir / em.MANIFEST
    manifest = json.loads(path.read_text())
    manifest['gpu'] = {'name': None, 'compute_capability': None}      # builder could not query
    path.write_text(json.dumps(manifest))
    check(engine_dir, bundle)
    assert 'the GPU they were built on is not known' in caplog.text
    with pytest.raises(EngineError, match='TensorRT 10.3.0 for None'):
        check(engine_dir, bundle, version='10.4.0')


def test_engine_file_changed_or_missing(built):
    bundle, engine_dir = built
    (engine_dir / 'decoder.fp16.engine').write_bytes(b'truncated')
    with pytest.raises(EngineError, match=r'decoder.fp16.engine sha256 mismatch .*rebuild with'):
        check(engine_dir, bundle)
    em.check_engine_manifest(engine_dir, '10.3.0', ORIN.name, '8.7', verify=False)   # no hashing
    (engine_dir / 'vision.fp16.engine').unlink()
    with pytest.raises(EngineError, match=r'vision.fp16.engine \(vision\) is missing'):
        em.check_engine_manifest(engine_dir, '10.3.0', ORIN.name, '8.7', verify=False)


def test_source_onnx_hash_must_match_the_bundle(built):
    bundle, engine_dir = built
    manifest = bundle.manifest.to_dict()
    manifest['files']['decoder.onnx'] = 'f' * 64                     # bundle re-exported since
    with pytest.raises(EngineError, match=r'decoder was built from decoder.onnx .* has ffffffff'):
        check(engine_dir, Bundle(bundle.path, Manifest.from_dict(manifest), 'x'))
    del manifest['files']['decoder.onnx']
    with pytest.raises(EngineError, match='no such file'):
        check(engine_dir, Bundle(bundle.path, Manifest.from_dict(manifest), 'x'))


def test_missing_corrupt_or_foreign_manifest(built, tmp_path):
    bundle, engine_dir = built
    with pytest.raises(EngineError, match='does not exist: build it with ros2-gmskip'):
        check(tmp_path / 'nowhere')
    path = engine_dir / em.MANIFEST
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(EngineError, match='engine_manifest.json is not valid JSON'):
        check(engine_dir)
    path.write_text(json.dumps({**json.loads(text), 'format': 'other@2'}))
    with pytest.raises(EngineError, match="format 'other@2'"):
        check(engine_dir)
    broken = json.loads(text)
    del broken['precision'], broken['gpu']
    path.write_text(json.dumps(broken))
    with pytest.raises(EngineError, match='lacks gpu, precision'):
        check(engine_dir)
    broken = json.loads(text)
    broken['engines']['vision']['file'] = '../elsewhere.engine'
    path.write_text(json.dumps(broken))
    with pytest.raises(EngineError, match='not a file name'):
        check(engine_dir)
    path.unlink()
    with pytest.raises(EngineError, match='has no engine_manifest.json'):
        check(engine_dir)
    assert 'has no engine_manifest.json' in em.needs_rebuild(engine_dir, '10.3.0', 'x', '8.7')


def test_needs_rebuild_compares_the_build_settings(built):
    bundle, engine_dir = built
    assert em.needs_rebuild(engine_dir, '10.3.0', ORIN.name, '8.7', bundle, 'k' * 16) is None
    reason = em.needs_rebuild(engine_dir, '10.3.0', ORIN.name, '8.7', bundle, 'other')
    assert 'built with other settings (precision fp16, max batch 1, max prompt 128' in reason


def test_compute_capability_spellings():
    assert {em.normalize_cc(v) for v in ((8, 7), '8.7', 'sm_87', 87, ' SM_87 ')} == {'8.7'}
    assert em.normalize_cc('10.0') == '10.0' and em.normalize_cc(None) is None
    assert em.sm('9.0') == 'sm_90'
    with pytest.raises(EngineError):
        em.normalize_cc('ampere')


# --- the CLI without TensorRT -------------------------------------------------------------------

@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, 'tensorrt', None)          # `import tensorrt` -> ImportError


def test_cli_without_tensorrt_is_one_line_and_exit_1(no_tensorrt, tmp_path, capsys):
    code = cli.main(['build-engine', str(tmp_path / 'bundle'), '--out', str(tmp_path / 'e')])
    out, err = capsys.readouterr()
    assert code == 1 and out == ''
    assert err.startswith(TRT_MISSING_LINE) and err.count('\n') == 1


def test_cli_help_lists_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(['build-engine', '--help'])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert 'Jetson AGX Orin' in out and 'x86 + NVIDIA GPU' in out and '--dla-core' in out


def test_backend_unavailable_without_tensorrt(no_tensorrt, tmp_path):
    ok, why = trt_backend.available()
    assert not ok and why.startswith('TensorRT is not installed')
    with pytest.raises(EngineError, match='TensorRT is not installed'):
        trt_backend.TrtBackend(tmp_path, tmp_path)


# --- a stand-in tensorrt ----------------------------------------------------------------------

def fake_onnx(graph: str, segments=PLAIN) -> dict:
    """Return what the fake parser reads from a '.onnx' file: the graph's I/O (-1 = dynamic)."""
    g = graphs_entry(segments)[graph]

    def spec(t):
        return {'name': t['name'], 'dtype': t['dtype'],
                'shape': [a if isinstance(a, int) else -1 for a in t['shape']]}
    out = {'kind': 'vision' if graph == 'vision' else 'decoder',
           'inputs': [spec(t) for t in g['inputs']],
           'outputs': [spec(t) for t in g['outputs']], 'layers': ['MATRIX_MULTIPLY']}
    if graph != 'vision':
        first, stop, ranks = segments[0 if graph == 'decoder' else int(graph.split('.')[1])]
        out.update(first=first, stop=stop, ranks=ranks)
    return out


class FakeTensor:

    def __init__(self, spec):
        self.name, self.shape, self.dtype = spec['name'], tuple(spec['shape']), spec['dtype']


class FakeNetwork:

    def __init__(self, flags):
        self.flags, self.spec = flags, None

    @property
    def num_inputs(self):
        return len(self.spec['inputs'])

    @property
    def num_outputs(self):
        return len(self.spec['outputs'])

    @property
    def num_layers(self):
        return len(self.spec['layers'])

    def get_input(self, i):
        return FakeTensor(self.spec['inputs'][i])

    def get_output(self, i):
        return FakeTensor(self.spec['outputs'][i])

    def get_layer(self, i):
        return types.SimpleNamespace(type=self.spec['layers'][i])


class FakeParser:

    def __init__(self, network, logger):
        self.network, self.errors = network, []

    def parse_from_file(self, path):
        spec = json.loads(Path(path).read_text())
        self.errors = spec.get('errors', [])
        self.network.spec = spec
        return not self.errors

    @property
    def num_errors(self):
        return len(self.errors)

    def get_error(self, i):
        return self.errors[i]


class FakeProfile:

    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, min_shape, opt_shape, max_shape):
        self.shapes[name] = (tuple(min_shape), tuple(opt_shape), tuple(max_shape))


class FakeCache:

    def __init__(self, blob):
        self.blob = blob

    def serialize(self):
        return self.blob + b'+timed'


class FakeConfig:

    def __init__(self, state):
        self.state = state
        self.flags, self.cleared, self.profiles, self.pools = set(), set(), [], {}
        self.cache = None
        self.default_device_type, self.DLA_core = 'GPU', -1
        state.configs.append(self)

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size

    def set_flag(self, flag):
        self.flags.add(flag)

    def clear_flag(self, flag):
        self.cleared.add(flag)

    def add_optimization_profile(self, profile):
        self.profiles.append(profile.shapes)
        return len(self.profiles) - 1

    def create_timing_cache(self, blob):
        self.state.cache_loads.append(bytes(blob))
        return FakeCache(bytes(blob))

    def set_timing_cache(self, cache, ignore_mismatch):
        assert ignore_mismatch is False
        if cache.blob.startswith(b'foreign'):
            return False
        self.cache = cache
        return True

    def get_timing_cache(self):
        return self.cache


class FakeBuilder:

    def __init__(self, logger, state):
        self.state = state
        self.platform_has_fast_fp16 = True
        self.num_DLA_cores = state.dla_cores

    def create_network(self, flags):
        net = FakeNetwork(flags)
        self.state.networks.append(net)
        return net

    def create_builder_config(self):
        return FakeConfig(self.state)

    def create_optimization_profile(self):
        return FakeProfile()

    def build_serialized_network(self, network, config):
        if self.state.fail_build:
            return None
        spec = dict(network.spec, profiles=[{n: list(map(list, s)) for n, s in p.items()}
                                            for p in config.profiles])
        return json.dumps(spec).encode()            # what the fake Runtime deserializes


def make_fake_trt(version='10.3.0', dla_cores=0, fail_build=False, bf16=True):
    """
    Return a `tensorrt` stand-in with the calls the builder and the backend make.

    Names are as in the TensorRT 10 Python API; `state` records what was asked of it.
    """
    trt = types.ModuleType('tensorrt')
    state = types.SimpleNamespace(networks=[], configs=[], cache_loads=[], dla_cores=dla_cores,
                                  fail_build=fail_build)
    trt.state = state
    trt.__version__ = version

    class ILogger:
        Severity = types.SimpleNamespace(INTERNAL_ERROR=0, ERROR=1, WARNING=2, INFO=3, VERBOSE=4)

        def __init__(self):
            pass
    trt.ILogger = ILogger
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=0)
    flags = {'FP16': 'FP16', 'INT8': 'INT8', 'TF32': 'TF32', 'GPU_FALLBACK': 'GPU_FALLBACK'}
    if bf16:
        flags['BF16'] = 'BF16'
    trt.BuilderFlag = types.SimpleNamespace(**flags)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE='WORKSPACE')
    trt.DeviceType = types.SimpleNamespace(GPU='GPU', DLA='DLA')
    trt.LayerType = types.SimpleNamespace(QUANTIZE='QUANTIZE', DEQUANTIZE='DEQUANTIZE',
                                          MATRIX_MULTIPLY='MATRIX_MULTIPLY')
    trt.TensorIOMode = types.SimpleNamespace(INPUT='INPUT', OUTPUT='OUTPUT')
    trt.OnnxParser = FakeParser
    trt.Builder = lambda logger: FakeBuilder(logger, state)
    trt.Runtime = FakeRuntime
    trt.nptype = np.dtype
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    trt = make_fake_trt()
    monkeypatch.setitem(sys.modules, 'tensorrt', trt)
    return trt


def build(bundle, out, **kwargs):
    kwargs.setdefault('prompt_len', 10)
    return trt_build.build_engines(bundle, out, trt_build.BuildConfig(**kwargs), gpu=ORIN)


def test_builder_writes_engines_and_manifest(fake_trt, tmp_path, caplog):
    bundle = write_bundle(tmp_path / 'bundle')
    cache = tmp_path / 'timing.cache'
    with caplog.at_level(logging.INFO):
        manifest = build(bundle, tmp_path / 'out', timing_cache=cache,
                         limits=Limits(2, 16, 6))
    out = tmp_path / 'out'
    assert {p.name for p in out.iterdir()} == {'decoder.fp16.engine', 'vision.fp16.engine',
                                               'engine_manifest.json'}
    # fp16: weakly typed network + FP16 flag, the workspace limit, one profile / two profiles
    assert [n.flags for n in fake_trt.state.networks] == [0, 0]
    vision_cfg, decoder_cfg = fake_trt.state.configs
    assert vision_cfg.flags == decoder_cfg.flags == {'FP16'}
    assert vision_cfg.pools == {'WORKSPACE': 4096 << 20}
    assert vision_cfg.profiles == [{'pixel_values': ((1, 3, H, H), (1, 3, H, H), (2, 3, H, H))}]
    prefill, decode = decoder_cfg.profiles
    assert prefill['past_key_values.0.key'] == ((1, KV, 0, D), (1, KV, 0, D), (2, KV, 0, D))
    assert decode['past_key_values.0.key'] == ((1, KV, 1, D), (1, KV, 13, D), (2, KV, 22, D))
    assert decode['attention_mask'] == ((1, 2), (1, 14), (2, 23))
    # timing cache: new, saved after each graph, the second graph starts from the first's
    assert fake_trt.state.cache_loads == [b'', b'+timed']
    assert cache.read_bytes() == b'+timed+timed'
    # engines and manifest agree; the manifest passes the runtime's check
    assert manifest == em.check_engine_manifest(out, '10.3.0', ORIN.name, '8.7', bundle=bundle)
    assert manifest['profiles']['decoder'][1]['name'] == 'decode'
    assert manifest['limits'] == {'max_batch': 2, 'max_prompt': 16, 'max_new_tokens': 6}
    # every input and output of both graphs is logged with shape and dtype
    for t in graphs_entry()['decoder']['inputs'] + graphs_entry()['vision']['outputs']:
        assert t['name'] in caplog.text
    assert 'shape (-1, 3, 16, 16)' in caplog.text and 'float32' in caplog.text


def test_every_parser_error_is_logged_then_engine_error(fake_trt, tmp_path, caplog):
    bundle = write_bundle(tmp_path / 'bundle')
    spec = dict(fake_onnx('vision'), errors=['node Conv_3: bad pads', 'node Foo_7: unsupported',
                                             'graph: invalid'])
    (bundle.path / 'vision.onnx').write_text(json.dumps(spec))
    with caplog.at_level(logging.ERROR), pytest.raises(EngineError) as err:
        build(bundle, tmp_path / 'out')
    errors = [r.getMessage() for r in caplog.records if 'ONNX parser error' in r.getMessage()]
    assert len(errors) == 3 and 'bad pads' in errors[0] and 'graph: invalid' in errors[2]
    assert '3 error(s), first: node Conv_3: bad pads' in str(err.value)
    assert not (tmp_path / 'out' / em.MANIFEST).exists()


def test_int8_needs_explicit_quantization(fake_trt, tmp_path):
    bundle = write_bundle(tmp_path / 'bundle')
    with pytest.raises(EngineError, match='no QuantizeLinear/DequantizeLinear nodes.*ModelOpt'):
        build(bundle, tmp_path / 'out', precision='int8')
    for kind in ('vision', 'decoder'):
        spec = dict(fake_onnx(kind), layers=['QUANTIZE', 'DEQUANTIZE', 'MATRIX_MULTIPLY'])
        (bundle.path / f'{kind}.onnx').write_text(json.dumps(spec))
    manifest = json.loads((bundle.path / 'manifest.json').read_text())
    manifest['files'].update({f'{k}.onnx': sha((bundle.path / f'{k}.onnx').read_bytes())
                              for k in ('vision', 'decoder')})
    (bundle.path / 'manifest.json').write_text(json.dumps(manifest))
    bundle = load_bundle(bundle.path)
    fake_trt.state.networks.clear()
    fake_trt.state.configs.clear()
    manifest = build(bundle, tmp_path / 'out', precision='int8')
    assert [n.flags for n in fake_trt.state.networks] == [1, 1]      # 1 << STRONGLY_TYPED
    assert all(not c.flags for c in fake_trt.state.configs)            # no precision flags
    assert manifest['engines']['vision']['file'] == 'vision.int8.engine'


def test_fp32_turns_tf32_off_and_bf16_needs_the_flag(tmp_path, monkeypatch):
    bundle = write_bundle(tmp_path / 'bundle')
    trt = make_fake_trt(bf16=False)
    monkeypatch.setitem(sys.modules, 'tensorrt', trt)
    build(bundle, tmp_path / 'out', precision='fp32')
    assert all(c.cleared == {'TF32'} and not c.flags for c in trt.state.configs)
    with pytest.raises(EngineError, match='has no BF16 builder flag'):
        build(bundle, tmp_path / 'out', precision='bf16')


def test_dla_core_for_the_vision_graph_only(tmp_path, monkeypatch):
    bundle = write_bundle(tmp_path / 'bundle')
    trt = make_fake_trt(dla_cores=2)
    monkeypatch.setitem(sys.modules, 'tensorrt', trt)
    manifest = build(bundle, tmp_path / 'out', dla_core=1)
    vision_cfg, decoder_cfg = trt.state.configs
    assert (vision_cfg.default_device_type, vision_cfg.DLA_core) == ('DLA', 1)
    assert 'GPU_FALLBACK' in vision_cfg.flags
    assert decoder_cfg.default_device_type == 'GPU' and 'GPU_FALLBACK' not in decoder_cfg.flags
    assert manifest['dla_core'] == 1
    with pytest.raises(EngineError, match='needs --precision fp16 or int8'):
        build(bundle, tmp_path / 'out', dla_core=0, precision='fp32')
    with pytest.raises(EngineError, match='has 2 DLA core'):
        build(bundle, tmp_path / 'out', dla_core=2)


def test_failed_build_and_slow_fp16_gpu(tmp_path, monkeypatch, caplog):
    bundle = write_bundle(tmp_path / 'bundle')
    monkeypatch.setitem(sys.modules, 'tensorrt', make_fake_trt(fail_build=True))
    with caplog.at_level(logging.WARNING), pytest.raises(EngineError, match='could not build'):
        trt_build.build_engines(bundle, tmp_path / 'out', trt_build.BuildConfig(prompt_len=10),
                                gpu=GpuInfo('Quadro M6000', '5.2'))
    assert 'has no fast fp16 (sm_70 or newer has)' in caplog.text
    assert trt_build._has_fast(Precision.FP16, '8.7')
    assert trt_build._has_fast(Precision.FP16, '5.3')
    assert not trt_build._has_fast(Precision.FP16, '6.1')          # GeForce Pascal
    assert not trt_build._has_fast(Precision.BF16, '7.5') and trt_build._has_fast(
        Precision.INT8, '6.1')
    assert trt_build._has_fast(Precision.INT8, None) is None


def test_foreign_timing_cache_is_replaced(fake_trt, tmp_path, caplog):
    bundle = write_bundle(tmp_path / 'bundle')
    cache = tmp_path / 'timing.cache'
    cache.write_bytes(b'foreign cache')
    with caplog.at_level(logging.WARNING):
        build(bundle, tmp_path / 'out', timing_cache=cache)
    assert 'another TensorRT or GPU' in caplog.text
    assert cache.read_bytes() == b'+timed+timed'


def test_cli_builds_skips_when_up_to_date_and_rebuilds(fake_trt, tmp_path, monkeypatch, capsys):
    bundle = write_bundle(tmp_path / 'bundle', tokenizer=True)
    monkeypatch.setattr(trt_backend, 'gpu_info', lambda device=0: ORIN)
    argv = ['build-engine', str(bundle.path), '--out', str(tmp_path / 'out'), '--build-only',
            '--max-prompt', '16', '--max-new-tokens', '6']
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert 'vision: ' in out and 'decoder.fp16.engine' in out and 'engine id' in out
    manifest = em.read_engine_manifest(tmp_path / 'out')
    assert manifest['prompt_len'] == N_IMG + 5        # <image> x4, user: describe the scene. bot:
    assert cli.main(argv) == 0
    assert 'are up to date' in capsys.readouterr().out
    assert cli.main(argv + ['--rebuild']) == 0
    assert 'decoder.fp16.engine' in capsys.readouterr().out
    assert cli.main(argv[:-4] + ['--max-prompt', '8']) == 1           # prompt of 9 > 8
    assert 'raise --max-prompt to at least 9' in capsys.readouterr().err
    assert em.read_engine_manifest(tmp_path / 'out')                   # the good build is kept


# --- the backend over a stand-in TensorRT and CUDA ----------------------------------------------

class FakeCuda:
    """Device memory as host bytearrays behind fake 256-aligned pointers."""

    name = 'fake-cuda'

    def __init__(self):
        self.blocks, self.next, self.freed = {}, 1 << 20, []

    def _at(self, ptr, nbytes):
        for base, block in self.blocks.items():
            if base <= ptr and ptr + nbytes <= base + len(block):
                return block, ptr - base
        raise AssertionError(f'pointer {ptr:#x}+{nbytes} outside any allocation')

    def view(self, ptr, shape, dtype):
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        block, off = self._at(ptr, count * dtype.itemsize)
        return np.frombuffer(block, dtype, count, off).reshape(shape)

    def device_count(self):
        return 1

    def set_device(self, device):
        pass

    def device_info(self, device=0):
        return ORIN

    def malloc(self, nbytes):
        ptr = self.next
        self.blocks[ptr] = bytearray(nbytes)
        self.next += -(-nbytes // 256) * 256 + 256
        return ptr

    def free(self, ptr):
        self.freed.append(ptr)

    def stream(self):
        return 'stream'

    def stream_handle(self, stream):
        return 7

    def destroy_stream(self, stream):
        pass

    def h2d(self, ptr, array, stream):
        block, off = self._at(ptr, array.nbytes)
        block[off:off + array.nbytes] = np.ascontiguousarray(array).tobytes()

    def d2h(self, array, ptr, stream):
        block, off = self._at(ptr, array.nbytes)
        array[...] = np.frombuffer(block, array.dtype, array.size, off).reshape(array.shape)

    def sync(self, stream):
        pass


def toy_kv(embeds, positions, layer):
    """Return the toy decoder's new keys/values (1, KV, T, D) from embeds (1, T, C), positions."""
    T = embeds.shape[1]
    x = embeds[0, :, :KV * D].reshape(T, KV, D).transpose(1, 0, 2)        # (KV, T, D)
    k = x * (layer + 1) + 0.01 * positions[0][None, :, None]
    return k[None].astype(np.float32), (x * (layer + 2))[None].astype(np.float32)


def toy_attention(keys):
    """(1, total): a softmax over the cache slots of one layer's keys (1, KV, total, D)."""
    score = keys[0].sum(axis=(0, 2)).astype(np.float64)
    p = np.exp(score - score.max())
    return (p / p.sum())[None].astype(np.float32)


def toy_logits(embeds, keys_last, mask):
    """(1, T, V) from the last layer's keys over the whole cache (1, KV, total, D), causally."""
    T, total = embeds.shape[1], keys_last.shape[2]
    out = np.zeros((1, T, V), np.float32)
    per_pos = keys_last[0].sum(axis=(0, 2)) * mask[0]                     # (total,)
    for t in range(T):
        s = per_pos[: total - T + t + 1].sum()
        out[0, t] = np.cos(s * (np.arange(V) + 1) + embeds[0, t].sum())
    return out


class FakeContext:

    def __init__(self, engine):
        self.engine, self.profile, self.shapes, self.addr = engine, 0, {}, {}

    def set_optimization_profile_async(self, index, handle):
        assert handle == 7
        self.profile = index
        return index < len(self.engine.spec['profiles'])

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.spec['profiles'][self.profile][name]
        self.shapes[name] = tuple(shape)
        return all(a <= s <= b for a, s, b in zip(lo, shape, hi))

    def set_tensor_address(self, name, ptr):
        assert ptr % 256 == 0, f'{name} at {ptr:#x} is not 256-byte aligned'
        self.addr[name] = ptr
        return True

    def get_tensor_shape(self, name):
        s = self.shapes
        if name == 'image_embeds':
            return (s['pixel_values'][0], N_IMG, C)
        raise AssertionError(f'the backend asks only the vision engine for shapes, not {name}')

    def _in(self, name, dtype=np.float32):
        return self.engine.cuda.view(self.addr[name], self.shapes[name], dtype).copy()

    def _out(self, name, value):
        self.engine.cuda.view(self.addr[name], value.shape, value.dtype)[...] = value

    def execute_async_v3(self, stream_handle):
        assert stream_handle == 7
        self.engine.runs.append((self.profile, dict(self.shapes)))
        if self.engine.spec['kind'] == 'vision':
            x = self._in('pixel_values')
            emb = np.tile(np.linspace(0.1, 1, C, dtype=np.float32), (1, N_IMG, 1)) * x.mean()
            self._out('image_embeds', emb + 0.1 * np.arange(N_IMG, dtype=np.float32)[:, None])
            return True
        spec = self.engine.spec
        rows = self._in('inputs_embeds' if spec['first'] == 0 else 'inputs_hidden')
        mask = self._in('attention_mask', np.int64)
        pos = self._in('position_ids', np.int64)
        for i in range(spec['first'], spec['stop']):
            new = toy_kv(rows, pos, i)
            for j, kind in enumerate(('key', 'value')):
                present = np.concatenate([self._in(f'past_key_values.{i}.{kind}'), new[j]], 2)
                self._out(f'present.{i}.{kind}', present)
                if i == spec['stop'] - 1 and kind == 'key':
                    last_keys = present
        if spec['stop'] == L:
            self._out('logits', toy_logits(rows, last_keys, mask))
        else:
            self._out('hidden_states', rows)               # the toy's residual stream: as is
        if spec['ranks']:
            self._out('last_token_attention', toy_attention(last_keys))
        return True


class FakeEngine:

    def __init__(self, spec, cuda):
        self.spec, self.cuda, self.runs = spec, cuda, []
        self.names = [t['name'] for t in spec['inputs'] + spec['outputs']]
        self.inputs = {t['name'] for t in spec['inputs']}
        self.dtypes = {t['name']: t['dtype'] for t in spec['inputs'] + spec['outputs']}

    num_io_tensors = property(lambda self: len(self.names))
    num_optimization_profiles = property(lambda self: len(self.spec['profiles']))

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return 'INPUT' if name in self.inputs else 'OUTPUT'

    def get_tensor_dtype(self, name):
        return self.dtypes[name]

    def get_tensor_profile_shape(self, name, profile):
        return [tuple(s) for s in self.spec['profiles'][profile][name]]

    def create_execution_context(self):
        return FakeContext(self)


class FakeRuntime:
    cuda = None

    def __init__(self, logger):
        pass

    def deserialize_cuda_engine(self, data):
        return FakeEngine(json.loads(bytes(data)), FakeRuntime.cuda)


def reference_greedy(embeds, table, n, stop):
    """Greedy decoding with the toy decoder recomputed from scratch every step (no KV cache)."""
    ids, x = [], embeds
    for _ in range(n):
        pos = np.arange(x.shape[1], dtype=np.int64)[None]
        keys = toy_kv(x, pos, L - 1)[0]
        token = int(toy_logits(x, keys, np.ones((1, x.shape[1]), np.int64))[0, -1].argmax())
        if token in stop:
            break
        ids.append(token)
        x = np.concatenate([x, table[token][None, None]], 1)
    return ids


@pytest.fixture
def backend(fake_trt, tmp_path, monkeypatch):
    bundle = write_bundle(tmp_path / 'bundle', tokenizer=True)
    build(bundle, tmp_path / 'engines', limits=Limits(1, 16, 6))
    cuda = FakeCuda()
    FakeRuntime.cuda = cuda
    monkeypatch.setattr(trt_backend, 'cuda_runtime', lambda: cuda)
    b = trt_backend.TrtBackend(tmp_path / 'engines', bundle.path)
    b.fake_cuda = cuda
    return b


def test_backend_greedy_with_kv_ping_pong_matches_full_recompute(backend):
    rng = np.random.default_rng(1)
    for trial in range(3):
        embeds = rng.normal(size=(1, 9 + trial, C)).astype(np.float32)
        stop = set(backend.decoder_loop.stop_ids)
        expected = reference_greedy(embeds, backend.embed_table, 6 - trial, stop)
        out = backend.decoder_loop.generate(embeds, 6 - trial)
        assert out.ids.tolist() == expected, trial
    runs = backend.decoder_loop.runners[0].ctx[0].engine.runs
    assert [p for p, _ in runs[:2]] == [0, 1]               # prefill (profile 0), then decode
    prefill, step = runs[0][1], runs[1][1]
    assert prefill['inputs_embeds'] == (1, 9, C) and prefill['past_key_values.0.key'][2] == 0
    assert step['inputs_embeds'] == (1, 1, C) and step['past_key_values.1.value'] == (1, KV, 9, D)
    assert step['attention_mask'] == (1, 10) and step['position_ids'] == (1, 1)
    assert sum(p == 0 for p, _ in runs) == 3                # one prefill per generate


def test_backend_describe_and_info(backend):
    image = np.random.default_rng(2).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    result = backend.describe(image, 'describe the scene.', max_new_tokens=5)
    assert result.tokens == 5 and result.text                # the toy model did not stop
    lat = result.latency
    assert lat.total_ms >= lat.vision_ms >= 0 and lat.decode_tokens == 4
    assert backend.info.backend == 'tensorrt' and backend.info.details['precision'] == 'fp16'
    assert backend.info.engine_id == em.read_engine_manifest(backend.engine_dir)['cache_key']
    assert backend.info.model_id == 'ab' * 6 and backend.info.plan_id == 'full'
    with pytest.raises(EngineError, match='exceed what engine .* was built for .*rebuild'):
        backend.describe(image, 'describe the scene.', max_new_tokens=15)   # 9 + 15 > 16+6+1
    backend.close()
    assert len(backend.fake_cuda.freed) == len(backend.fake_cuda.blocks)


def test_backend_refuses_stale_engines_unless_rebuild(fake_trt, tmp_path, monkeypatch):
    bundle = write_bundle(tmp_path / 'bundle', tokenizer=True)
    build(bundle, tmp_path / 'engines', limits=Limits(1, 16, 6))
    cuda = FakeCuda()
    FakeRuntime.cuda = cuda
    monkeypatch.setattr(trt_backend, 'cuda_runtime', lambda: cuda)
    fake_trt.__version__ = '10.8.0'                       # TensorRT upgraded since the build
    with pytest.raises(EngineError, match=r'built with TensorRT 10.3.0.*this is TensorRT 10.8.0'):
        trt_backend.TrtBackend(tmp_path / 'engines', bundle.path)
    monkeypatch.setattr(trt_backend, 'gpu_info', lambda device=0: ORIN)
    b = trt_backend.TrtBackend(tmp_path / 'engines', load_bundle(bundle.path), rebuild=True)
    assert em.read_engine_manifest(tmp_path / 'engines')['tensorrt_version'] == '10.8.0'
    assert b.info.details['limits'] == {'max_batch': 1, 'max_prompt': 16, 'max_new_tokens': 6}


def test_backend_builds_on_first_use_and_build_only(fake_trt, tmp_path, monkeypatch):
    bundle = write_bundle(tmp_path / 'bundle', tokenizer=True)
    cuda = FakeCuda()
    FakeRuntime.cuda = cuda
    monkeypatch.setattr(trt_backend, 'cuda_runtime', lambda: cuda)
    # as runtime.factory calls it: engine=..., bundle=..., build_only=...
    b = trt_backend.TrtBackend(engine=None, bundle=bundle.path, build_only=True)
    assert b.engine_dir == tmp_path / 'bundle.fp16.engines'
    assert em.read_engine_manifest(b.engine_dir)['precision'] == 'fp16'
    assert not cuda.blocks                                    # build_only: no GPU buffers
    with pytest.raises(EngineError, match='build_only'):
        b.describe(np.zeros((8, 8, 3), np.uint8))
    b = trt_backend.TrtBackend(engine=b.engine_dir)             # bundle from the manifest
    assert b.bundle.path == bundle.path and b.info.engine_id
    with pytest.raises(EngineError, match='needs an engine folder'):
        trt_backend.TrtBackend()


def reference_token_skip(embeds, table, n, stop, image_rows, n_keep, retained):
    """
    Return greedy ids of the two-segment toy, recomputed from scratch every step.

    FastV after block 0 (rank by block 0's attention over the prompt, keep `n_keep` image rows),
    then visual KV removal in every block (only the `retained` image rows stay cached).
    """
    T = embeds.shape[1]
    att = toy_attention(toy_kv(embeds, np.arange(T)[None], 0)[0])[0]
    order = np.argsort(-att[image_rows], kind='stable')              # ties: the earlier row
    kept = set(image_rows[order[:n_keep]].tolist())
    rows = np.array([r for r in range(T) if r not in image_rows or r in kept])
    cache = np.array([r for r in rows if r not in image_rows or r in retained])
    x = embeds[:, rows]                                   # segment 0 passes rows on as they are
    keys = toy_kv(x, rows[None], L - 1)[0]
    token = int(toy_logits(x, keys, np.ones((1, len(rows)), np.int64))[0, -1].argmax())
    ids = []
    while token not in stop and len(ids) < n:
        ids.append(token)
        if len(ids) == n:
            break
        x = np.concatenate([embeds[:, cache], table[ids][None]], 1)
        pos = np.concatenate([cache, T + np.arange(len(ids))])
        keys = toy_kv(x, pos[None], L - 1)[0]
        token = int(toy_logits(x[:, -1:], keys, np.ones((1, x.shape[1]), np.int64))[0, -1]
                    .argmax())
    return ids


@pytest.fixture
def skip_backend(fake_trt, tmp_path, monkeypatch):
    """Return a TrtBackend on a FastV K=1 R=0.5 + KV removal 0.5 bundle: two segments."""
    token_skip = {'fastv': {'k': 1, 'r': 0.5, 'seed': 0},
                  'kv_removal': {'ratio': 0.5, 'start_layer': 0}}
    bundle = write_bundle(tmp_path / 'bundle', tokenizer=True, segments=SPLIT,
                          token_skip=token_skip)
    manifest = build(bundle, tmp_path / 'engines', limits=Limits(1, 16, 6))
    assert set(manifest['engines']) == {'vision', 'decoder', 'decoder.1'}
    assert manifest['engines']['decoder.1']['source_onnx'] == 'decoder.1.onnx'
    assert manifest['profiles']['decoder.1'][0]['shapes']['inputs_hidden']['max'] == [1, 16, C]
    cuda = FakeCuda()
    FakeRuntime.cuda = cuda
    monkeypatch.setattr(trt_backend, 'cuda_runtime', lambda: cuda)
    return trt_backend.TrtBackend(tmp_path / 'engines', bundle.path)


def test_backend_runs_a_token_skipping_bundle(skip_backend):
    """One engine per segment; FastV ranks by the engine's attention; KV removal compacts."""
    loop = skip_backend.decoder_loop
    assert [r.segment.name for r in loop.runners] == ['decoder', 'decoder.1']
    assert skip_backend.info.tokens.describe() == 'FastV K=1 R=0.5, KV removal 50%'
    assert not loop.speculative                         # one new row per decode run
    rng = np.random.default_rng(3)
    image_rows = np.arange(N_IMG)
    retained = {0, 2}                                   # the stride rule keeps slots 0 and 2
    for trial in range(3):
        embeds = rng.normal(size=(1, 9 + trial, C)).astype(np.float32)
        expected = reference_token_skip(embeds, skip_backend.embed_table, 5, loop.stop_ids,
                                        image_rows, 2, retained)
        out = loop.generate(embeds, 5, image_rows)
        assert out.ids.tolist() == expected, trial
    first, second = (r.ctx[0].engine.runs for r in loop.runners)
    T = 11                                              # the last trial's prompt
    prefill = [shapes for profile, shapes in first if profile == 0][-1]
    assert prefill['inputs_embeds'] == (1, T, C)
    prefill = [shapes for profile, shapes in second if profile == 0][-1]
    assert prefill['inputs_hidden'] == (1, T - 2, C)    # FastV dropped 2 of the 4 image rows
    step = [shapes for profile, shapes in first if profile == 1][-len(out.ids) + 1]
    assert step['past_key_values.0.key'] == (1, KV, T - 2, D)   # KV removal: 2 visual slots
    image = np.random.default_rng(4).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    assert skip_backend.describe(image, 'describe the scene.', max_new_tokens=4).tokens >= 1


# --- real TensorRT (skipped without it and a GPU) ----------------------------------------------

def _real_trt_and_gpu():
    trt = pytest.importorskip('tensorrt')
    ok, why = trt_backend.available()
    if not ok:
        pytest.skip(why)
    return trt


def test_real_tensorrt_logger_and_gpu_query():
    trt = _real_trt_and_gpu()
    logger = trt_backend.make_logger(trt, verbose=False)
    builder = trt.Builder(logger)
    assert builder.create_builder_config() is not None
    info = trt_backend.gpu_info()
    assert info.name and em.normalize_cc(info.compute_capability)


def test_real_tensorrt_builds_a_tiny_onnx_with_profiles(tmp_path):
    trt = _real_trt_and_gpu()
    onnx = pytest.importorskip('onnx')
    from onnx import helper, TensorProto
    x = helper.make_tensor_value_info('x', TensorProto.FLOAT, ['batch', 4])
    y = helper.make_tensor_value_info('y', TensorProto.FLOAT, ['batch', 4])
    graph = helper.make_graph([helper.make_node('Relu', ['x'], ['y'])], 'g', [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', 17)])
    path = tmp_path / 'tiny.onnx'
    onnx.save(model, str(path))
    logger = trt_backend.make_logger(trt)
    builder = trt.Builder(logger)
    network, parser = trt_build.parse_onnx(trt, builder, logger, path, 0)
    cfg = trt_build.BuildConfig(precision='fp32', workspace_mb=64)
    config = trt_build.configure(trt, builder, network, cfg, 'tiny', trt_backend.gpu_info())
    profile = Profile('p', {'x': ShapeRange((1, 4), (1, 4), (2, 4))})
    trt_build.add_profiles(builder, config, network, [profile], 'tiny')
    trt_build.attach_timing_cache(config, None)
    engine = trt.Runtime(logger).deserialize_cuda_engine(
        builder.build_serialized_network(network, config))
    assert engine.num_io_tensors == 2
    assert tuple(engine.get_tensor_profile_shape('x', 0)[2]) == (2, 4)
