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
The ROS 2 side: the describer node, message conversion, transports, rosbag2 I/O.

Nothing here imports torch or transformers. Importing this package is cheap: the names below are
loaded from their submodule on first use (PEP 562), so `import ros2_gmskip.ros` pulls in neither
cv2, rosbags, rclpy nor cyclonedds.

- `image_convert`: sensor_msgs/Image and CompressedImage <-> RGB arrays, duck-typed on the
  message fields (rosbags, rclpy and Cyclone DDS messages alike).
- `bag`: reading camera frames from rosbag2 (MCAP, sqlite3; damaged bags up to the damage),
  writing output bags, and `make_bag` for test bags of rendered scenes.
"""

from __future__ import annotations

from ros2_gmskip.lazy import lazy_exports

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    'BagFrame': 'bag',
    'BagImageReader': 'bag',
    'BagOutputWriter': 'bag',
    'COMPRESSED_TYPE': 'bag',
    'IMAGE_TYPE': 'bag',
    'SUPPORTED_ENCODINGS': 'image_convert',
    'compressed_to_rgb': 'image_convert',
    'header_msg': 'bag',
    'image_to_rgb': 'image_convert',
    'make_bag': 'bag',
    'rgb_to_image_fields': 'image_convert',
    'rgb_to_jpeg': 'image_convert',
    'stamp_to_ns': 'bag',
}

__all__ = [
    'BagFrame',
    'BagImageReader',
    'BagOutputWriter',
    'COMPRESSED_TYPE',
    'IMAGE_TYPE',
    'SUPPORTED_ENCODINGS',
    'compressed_to_rgb',
    'header_msg',
    'image_to_rgb',
    'make_bag',
    'rgb_to_image_fields',
    'rgb_to_jpeg',
    'stamp_to_ns',
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
