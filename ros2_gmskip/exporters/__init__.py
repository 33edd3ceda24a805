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
Export (GM-Skip pruned) VLMs to ONNX bundles, validate them, lint them for TensorRT.

The bundle's layout is `ros2_gmskip.bundle_format`; TensorRT engines are built on the target by
`ros2_gmskip.runtime.trt_build` (the node builds them on first use).

    from ros2_gmskip.exporters import export_bundle
    result = export_bundle(Path('models/gmskip-llava-scenes'), Path('bundles/pruned'),
                           plan=Path('plans/reverse.json'))

`export_bundle` (and everything that needs torch) is imported on first use, so
`import ros2_gmskip.exporters.trt_ops` / `.export_config` stay light.
"""

from __future__ import annotations

from typing import Any

__all__ = ['ExportConfig', 'export_bundle', 'export_config_for', 'lint_graph']


def __getattr__(name: str) -> Any:
    if name == 'export_bundle':
        from ros2_gmskip.exporters.onnx_export import export_bundle
        return export_bundle
    if name in ('ExportConfig', 'export_config_for'):
        from ros2_gmskip.exporters import export_config
        return getattr(export_config, name)
    if name == 'lint_graph':
        from ros2_gmskip.exporters.trt_ops import lint_graph
        return lint_graph
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
