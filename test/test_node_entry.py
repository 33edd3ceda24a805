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
The console script's start (a missing dependency is one line) and Python logging into rclpy's.

The rclpy part runs the routing against a real node and reads the record back from /rosout.
"""

import logging
import subprocess
import sys
import time

import pytest
from ros2_gmskip.ros.entry import DEPENDENCIES, first_missing, missing_line
from ros2_gmskip.ros.ros_logging import PACKAGE_LOGGER, routed_to
import ros_env

pytestmark = pytest.mark.ros       # also run by `colcon test` in `make colcon-test`
BLOCK = 'import sys; sys.modules[{name!r}] = None; from ros2_gmskip.ros.entry import main; ' \
        'sys.exit(main(["gmskip_describer"] + sys.argv[1:]))'


def run_without(module: str, *args: str) -> subprocess.CompletedProcess:
    """Run the console script's main with `module` unimportable."""
    return subprocess.run([sys.executable, '-c', BLOCK.format(name=module), *args],
                          env=ros_env.child_env(ros_env.use_loopback()), cwd=ros_env.REPO,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize('module,key', [('cv2', 'python3-opencv'),
                                        ('jsonschema', 'python3-jsonschema')])
def test_missing_dependency_refuses_to_start_in_one_line(module, key):
    proc = run_without(module)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count('\n') == 1 and 'Traceback' not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"error: Python module '{module}' is missing: install {key}")


def test_missing_transport_dependency_found_when_imported():
    proc = run_without('cyclonedds', '--transport', 'dds')
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip() == missing_line('cyclonedds'), proc.stderr
    assert 'pip install cyclonedds' in proc.stderr


def test_dependency_table_matches_requirements_and_package_xml():
    import xml.etree.ElementTree as ET
    requirements = (ros_env.REPO / 'requirements.txt').read_text().lower()
    keys = {e.text for e in ET.parse(ros_env.REPO / 'package.xml').getroot().iter('exec_depend')}
    for module, (rosdep, pip) in DEPENDENCIES.items():
        assert f'\n{pip.lower()}==' in requirements, f'{pip} ({module}) is not pinned'
        if rosdep:
            assert rosdep in keys, f'package.xml lacks <exec_depend>{rosdep}</exec_depend>'
    assert first_missing() is None


class Recorder:
    """Stand-in for an rclpy logger: keeps (severity, text)."""

    def __init__(self, level: int = 10) -> None:
        self.lines: list[tuple[str, str]] = []
        self.level = level

    def get_effective_level(self) -> int:
        return self.level

    def __getattr__(self, severity):
        return lambda text: self.lines.append((severity, text))


def test_records_are_routed_with_their_logger_name_and_severity():
    ros = Recorder(level=20)
    package = logging.getLogger(PACKAGE_LOGGER)
    before = (package.level, package.propagate)
    with routed_to(ros):
        log = logging.getLogger('ros2_gmskip.runtime.factory')
        log.debug('hidden: below the rclpy level')
        log.info('loaded %s', 'bundle')
        log.warning('slow')
        log.error('failed')
        log.critical('gone')
        try:
            raise ValueError('bad')
        except ValueError:
            log.exception('with traceback')
        assert not package.propagate
    assert (package.level, package.propagate) == before
    logging.getLogger('ros2_gmskip.x').warning('after: not routed')
    assert [s for s, _ in ros.lines] == ['info', 'warning', 'error', 'fatal', 'error']
    assert ros.lines[0][1] == '[ros2_gmskip.runtime.factory] loaded bundle'
    assert 'ValueError: bad' in ros.lines[-1][1]


@pytest.mark.timeout(60)
def test_routed_records_reach_rosout_under_rclpy():
    ros_env.use_loopback()
    rclpy = ros_env.import_rclpy()
    from rcl_interfaces.msg import Log
    from rclpy.qos import DurabilityPolicy, QoSProfile

    rclpy.init()
    try:
        node = rclpy.create_node('routing_test', namespace='/logs')
        got = []
        node.create_subscription(Log, '/rosout', got.append, QoSProfile(
            depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        with routed_to(node.get_logger()):
            logging.getLogger('ros2_gmskip.runtime.ort_backend').warning('routed %d', 42)
        end = time.monotonic() + 10
        while time.monotonic() < end and not got:
            rclpy.spin_once(node, timeout_sec=0.1)
        node.destroy_node()
    finally:
        rclpy.try_shutdown()
    (msg,) = [m for m in got if 'routed 42' in m.msg]
    assert msg.name == 'logs.routing_test' and msg.level == 30 and msg.stamp.sec > 0
    assert msg.msg == '[ros2_gmskip.runtime.ort_backend] routed 42'
