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
The runtime never imports torch or transformers.

The node must start on a Jetson without them.
"""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = r"""
import json, sys
import numpy as np
import ros2_gmskip.runtime
import ros2_gmskip.bundle_format
from ros2_gmskip.runtime import decode, factory, ort_backend, ort_runners, preprocess, tokenizer
from ros2_gmskip.runtime import trt_engines, trt_profiles
import ros2_gmskip.exporters.trt_ops, ros2_gmskip.exporters.export_config
import ros2_gmskip.verbs.export, ros2_gmskip.verbs.describe
backend = factory.create_backend('onnxruntime', bundle=sys.argv[1], threads=1)
image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
result = backend.describe(image, max_new_tokens=4)
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))
print(json.dumps({'heavy': heavy, 'tokens': result.tokens, 'total_ms': result.latency.total_ms}))
"""


def test_runtime_runs_without_torch_or_transformers(tiny_bundle):
    proc = subprocess.run([sys.executable, '-c', SCRIPT, str(tiny_bundle)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report['heavy'] == [], f'runtime imported {report["heavy"][:5]}'
    assert report['tokens'] >= 1 and report['total_ms'] > 0
