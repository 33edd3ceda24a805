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
Route the package's Python `logging` records into the node's rclpy logger while the node runs.

Library code logs through `logging.getLogger(__name__)` (the runtime, the bundle export, ...).
Under rclpy those lines must reach /rosout, the ROS log file and the console with a timestamp and
the node's name, like the node's own lines: `routed_to(node.get_logger())` hands every record of
the `ros2_gmskip` logger tree to the rclpy logger for as long as the context is open, with the
Python logger's name in front (`[ros2_gmskip.runtime.factory] ...`).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

PACKAGE_LOGGER = 'ros2_gmskip'
_PASS_THROUGH = logging.Formatter('%(message)s')


class RclpyLogHandler(logging.Handler):
    """A `logging.Handler` that writes each record through an rclpy logger."""

    def __init__(self, ros_logger: Any) -> None:
        super().__init__()
        self.ros_logger = ros_logger
        self.setFormatter(_PASS_THROUGH)

    def emit(self, record: logging.LogRecord) -> None:
        """Log `record` at the matching rclpy severity (CRITICAL -> fatal)."""
        try:
            text = f'[{record.name}] {self.format(record)}'
            if record.levelno >= logging.CRITICAL:
                self.ros_logger.fatal(text)
            elif record.levelno >= logging.ERROR:
                self.ros_logger.error(text)
            elif record.levelno >= logging.WARNING:
                self.ros_logger.warning(text)
            elif record.levelno >= logging.INFO:
                self.ros_logger.info(text)
            else:
                self.ros_logger.debug(text)
        except Exception:  # noqa: B902 - logging must never raise into the caller
            self.handleError(record)


@contextlib.contextmanager
def routed_to(ros_logger: Any, name: str = PACKAGE_LOGGER) -> Iterator[RclpyLogHandler]:
    """
    Send the records of logger `name` (and its children) to `ros_logger` inside the block.

    The Python logger stops propagating to the root logger meanwhile (no line printed twice) and
    takes the rclpy logger's level (`--ros-args --log-level debug` shows debug lines); both are
    restored on exit.
    """
    logger = logging.getLogger(name)
    handler = RclpyLogHandler(ros_logger)
    saved = (logger.level, logger.propagate)
    level = _ros_level(ros_logger)
    logger.addHandler(handler)
    logger.propagate = False
    if level is not None:
        logger.setLevel(level)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _ros_level(ros_logger: Any) -> int | None:
    """Return the rclpy logger's effective severity as a `logging` level (same numbers)."""
    try:
        return int(ros_logger.get_effective_level())
    except Exception:  # noqa: B902 - a logger without levels: keep the Python one
        return None
