"""ONNX export of (GM-Skip pruned) VLMs, its validation, manifests and the TensorRT op lint.

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
