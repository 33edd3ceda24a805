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
Loading VLMs, locating and removing their blocks, prompting, generation, and the default model.

Submodules import torch/transformers; import them explicitly (`from ros2_gmskip.vlm.loading import
load_vlm`) so that importing this package stays free.
"""

__all__: list[str] = []
