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
Build what the describer publishes, once, for the live node and for replay alike.

    for topic, msgtype, fields in scene_messages(out, stamp=(sec, nanosec)):
        publishers[topic].publish(transport.make_message(msgtype, **fields))

Each message is (topic, msgtype, fields): the private topic name ('~/output/scene'), the ROS 2
type name, and the field values as plain Python (nested messages as dicts, sequences as lists).
The node fills them into messages through its transport (rclpy or Cyclone DDS), replay into
rosbags messages for the output bag; what is published, and when a value is left out, is decided
here only.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ros2_gmskip.ros.params import NODE_NAME
from ros2_gmskip.ros.pipeline import format_value, LEVELS, SceneOutput

STRING = 'std_msgs/msg/String'
FLOAT64_STAMPED = 'autoware_internal_debug_msgs/msg/Float64Stamped'
DIAGNOSTIC_ARRAY = 'diagnostic_msgs/msg/DiagnosticArray'
DESCRIPTION, SCENE, DIAGNOSTICS = '~/output/description', '~/output/scene', '/diagnostics'
DEBUG_TOPICS = ('processing_time_ms', 'pipeline_latency_ms', 'cyclic_time_ms')
DIAGNOSTIC_NAME = f'{NODE_NAME}: inference'      # of the node at '/' under its default name

Message = tuple[str, str, dict[str, Any]]


def scene_messages(out: SceneOutput, stamp: tuple[int, int], debug: bool = True
                   ) -> list[Message]:
    """
    Return one described frame's messages: description, scene JSON, and the debug timings.

    `stamp` (sec, nanosec) stamps the Float64Stamped debug values; `debug` False leaves them out.
    A timing that is NaN (the first cyclic time, an unstamped image) is not published.
    """
    messages = [(DESCRIPTION, STRING, {'data': out.text}),
                (SCENE, STRING, {'data': json.dumps(out.scene_dict())})]
    if debug:
        sec, nanosec = stamp
        for name in DEBUG_TOPICS:
            value = float(getattr(out, name))
            if math.isfinite(value):
                messages.append((f'~/debug/{name}', FLOAT64_STAMPED, {
                    'stamp': {'sec': int(sec), 'nanosec': int(nanosec)}, 'data': value}))
    return messages


def diagnostics_message(diagnostics: dict[str, Any], stamp: tuple[int, int],
                        name: str = DIAGNOSTIC_NAME) -> Message:
    """Return the /diagnostics array of `DescriberCore.diagnostics()` at `stamp`, as `name`."""
    sec, nanosec = stamp
    values = diagnostics['values']
    status = {
        'level': LEVELS[diagnostics['level']],
        'name': name,
        'message': diagnostics['message'],
        'hardware_id': str(values.get('backend', '')),
        'values': [{'key': str(k), 'value': format_value(v)} for k, v in values.items()],
    }
    return (DIAGNOSTICS, DIAGNOSTIC_ARRAY, {
        'header': {'stamp': {'sec': int(sec), 'nanosec': int(nanosec)}, 'frame_id': ''},
        'status': [status]})


def absolute_topic(topic: str) -> str:
    """Resolve a private topic ('~/output/scene') for the node in the root namespace."""
    return f'/{NODE_NAME}/{topic[2:]}' if topic.startswith('~/') else topic
