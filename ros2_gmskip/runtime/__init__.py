"""Backends behind one interface, the decode loop, and latency accounting.

Never imports torch or transformers (a test checks): the node must start fast on a Jetson with only
numpy, tokenizers, onnxruntime and (optionally) TensorRT. The torch reference backend lives in
`ros2_gmskip.vlm.torch_backend` and is only imported when asked for.
"""

from ros2_gmskip.runtime.types import Backend, DEFAULT_PROMPT, Latency, Result

__all__ = ['Backend', 'DEFAULT_PROMPT', 'Latency', 'Result']
