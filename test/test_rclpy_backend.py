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
A real backend end to end under rclpy: the onnxruntime backend on the tiny exported bundle.

The node (child process, rclpy, Fast DDS) describes rendered scenes published by a probe node;
each description must be the text the same backend gives in this process for the same image,
and the backend's own `logging` lines must reach /rosout under the node's name.
"""

import json
import signal
import time

import pytest
import ros_env

DOMAIN = ros_env.use_loopback()
rclpy = ros_env.import_rclpy()

from rcl_interfaces.msg import Log  # noqa: E402, I100 - after the env is set
from rclpy.qos import DurabilityPolicy, qos_profile_sensor_data, QoSProfile  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

PROMPT, MAX_NEW_TOKENS = 'describe the scene.', 8


@pytest.mark.timeout(240)
def test_onnxruntime_backend_end_to_end_under_rclpy(tiny_bundle, scene_images):
    from ros2_gmskip.runtime.ort_backend import OrtBackend

    local = OrtBackend(tiny_bundle, threads=1)
    expected = [local.describe(rgb, PROMPT, MAX_NEW_TOKENS).text for rgb in scene_images[:3]]
    proc = ros_env.start_describer(DOMAIN, [
        '-r', '__ns:=/e2e', '-r', '~/input/image:=/e2e/camera/image',
        '-p', f'bundle_path:={tiny_bundle}', '-p', 'device:=cpu', '-p', f'prompt:={PROMPT}',
        '-p', f'max_new_tokens:={MAX_NEW_TOKENS}'], backend='')
    rclpy.init(domain_id=DOMAIN)      # not the environment: other modules set theirs
    node = rclpy.create_node('e2e_probe')
    scenes, rosout = [], []
    node.create_subscription(String, '/e2e/gmskip_describer/output/scene',
                             lambda m: scenes.append(json.loads(m.data)), 10)
    node.create_subscription(Log, '/rosout', rosout.append, QoSProfile(
        depth=1000, durability=DurabilityPolicy.TRANSIENT_LOCAL))
    camera = node.create_publisher(Image, '/e2e/camera/image', qos_profile_sensor_data)

    def spin():
        rclpy.spin_once(node, timeout_sec=0.05)

    try:
        assert ros_env.wait_for(lambda: camera.get_subscription_count() == 1, 120, spin, proc), \
            ros_env.stop(proc, signal.SIGKILL)[1]
        for i, rgb in enumerate(scene_images[:3]):
            h, w, _ = rgb.shape
            msg = Image(height=h, width=w, encoding='rgb8', step=w * 3, data=rgb.tobytes())
            msg.header.stamp.sec, msg.header.frame_id = 1000 + i, 'camera0/camera_optical_link'

            def described(sec=1000 + i, msg=msg):
                # best effort: sent again every 2 s until described (a repeat gives the same text)
                if any(s['stamp']['sec'] == sec for s in scenes):
                    return True
                if time.monotonic() >= sent_at[0] + 2.0:
                    camera.publish(msg)
                    sent_at[0] = time.monotonic()
                return False

            sent_at = [0.0]
            assert ros_env.wait_for(described, 90, spin, proc), \
                ros_env.stop(proc, signal.SIGKILL)[1]
        assert ros_env.wait_for(lambda: any('[ros2_gmskip.runtime.ort_backend]' in m.msg
                                            for m in rosout), 5, spin)
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        rc, out = ros_env.stop(proc, signal.SIGINT, timeout_s=30)
    assert rc == 0 and 'Traceback' not in out, out
    texts = {s['stamp']['sec']: s['text'] for s in scenes}
    assert texts == {1000 + i: text for i, text in enumerate(expected)}, scenes
    # the ids are the backend's: the weights' and the plan's, as every backend names them
    assert {s['model_id'] for s in scenes} == {local.info.model_id} and local.info.model_id
    assert {s['plan_id'] for s in scenes} == {local.info.plan_id}
    (loaded,) = [m for m in rosout if '[ros2_gmskip.runtime.ort_backend]' in m.msg
                 and 'onnxruntime backend' in m.msg]
    assert loaded.name == 'e2e.gmskip_describer' and loaded.level == 20
