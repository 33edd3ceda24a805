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
Loopback-only ROS 2 environments for the tests that run real rclpy (Fast DDS) and Cyclone DDS.

Every participant stays on 127.0.0.1: Cyclone DDS through config/cyclonedds-loopback.xml, Fast
DDS (rmw_fastrtps_cpp, what the rclpy wheels use) through ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
and config/fastdds-loopback.xml. Each test module takes its own random domain id, set before
rclpy.init. Child processes get the same variables and a PYTHONPATH that keeps the parent's (an
overlay's packages under colcon test) after test/ and the source tree.
"""

from __future__ import annotations

import os
from pathlib import Path
import random
import subprocess
import sys
import time
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
TEST_DIR = Path(__file__).resolve().parent
CYCLONE_XML = REPO / 'config' / 'cyclonedds-loopback.xml'
FASTDDS_XML = REPO / 'config' / 'fastdds-loopback.xml'


def loopback_env(domain: int) -> dict[str, str]:
    """Return the variables that keep every DDS participant on loopback, in `domain`."""
    return {
        'ROS_DOMAIN_ID': str(domain),
        'CYCLONEDDS_URI': f'file://{CYCLONE_XML}',
        'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
        'FASTRTPS_DEFAULT_PROFILES_FILE': str(FASTDDS_XML),
    }


def use_loopback(domain: int | None = None) -> int:
    """Set the loopback variables in this process (before rclpy.init); return the domain."""
    domain = random.randint(100, 200) if domain is None else domain
    os.environ.update(loopback_env(domain))
    os.environ.pop('ROS_LOCALHOST_ONLY', None)      # deprecated on Jazzy; the range replaces it
    return domain


def child_env(domain: int) -> dict[str, str]:
    """Return the environment of a child process: loopback, and test/ + the repo importable."""
    paths = [str(TEST_DIR), str(REPO)] + [p for p in os.environ.get('PYTHONPATH', '').split(
        os.pathsep) if p]
    env = dict(os.environ, **loopback_env(domain), PYTHONPATH=os.pathsep.join(paths),
               PYTHONUNBUFFERED='1')
    env.pop('ROS_LOCALHOST_ONLY', None)
    return env


def start_describer(domain: int, ros_args: list[str], transport: str = 'rclpy',
                    backend: str = 'ros2_gmskip.runtime.factory:create_backend:fake:40',
                    ) -> subprocess.Popen:
    """Start `gmskip_describer` (the console script's module) in a child process."""
    cmd = [sys.executable, '-m', 'ros2_gmskip.ros.entry', '--transport', transport]
    if backend:
        cmd += ['--backend-factory', backend]
    return subprocess.Popen(cmd + ['--ros-args'] + ros_args, env=child_env(domain), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop(proc: subprocess.Popen | None, sig: int | None = None,
         timeout_s: float = 20.0) -> tuple[int | None, str]:
    """Stop `proc` (with `sig`, else it must have ended); return (exit code, its output)."""
    if proc is None:
        return None, ''
    if sig is not None and proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return None, out + '\n[killed after timeout]'
    return proc.returncode, out


def wait_for(cond: Callable[[], Any], timeout_s: float, step: Callable[[], None] | None = None,
             proc: subprocess.Popen | None = None) -> bool:
    """Poll `cond` (calling `step` between polls, e.g. spin_once) until true or timeout."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        if proc is not None and proc.poll() is not None:
            return bool(cond())
        if step is not None:
            step()
        else:
            time.sleep(0.05)
    return bool(cond())


def import_rclpy() -> Any:
    """Return rclpy; skip without it, except on CI (CI=true), where `make test` installs it."""
    import pytest

    try:
        import rclpy
    except ImportError as err:
        if os.environ.get('CI'):
            pytest.fail(f'rclpy is not importable on CI ({err}): requirements-test.txt '
                        'installs the Jazzy wheels')
        pytest.skip(f'rclpy is not installed ({err}): make install brings the Jazzy wheels',
                    allow_module_level=True)
    return rclpy
