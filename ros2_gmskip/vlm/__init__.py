"""Loading VLMs, locating and removing their blocks, prompting, generation, and the default model.

Submodules import torch/transformers; import them explicitly (`from ros2_gmskip.vlm.loading import
load_vlm`) so that importing this package stays free.
"""

__all__: list[str] = []
