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

r"""
Run the gmskip_describer node: describe the newest camera frame, publish text + latency stats.

With ROS 2 sourced it is an rclpy node (the same as `ros2 run ros2_gmskip gmskip_describer`).
Without ROS 2 it runs on Cyclone DDS in the ROS 2 wire format (topics rt/..., types
pkg::msg::dds_::Type_), so it still talks to nodes using rmw_cyclonedds_cpp on the same
ROS_DOMAIN_ID. ROS arguments after --ros-args work with both transports.

Topics: in ~/input/image (or ~/input/image/compressed); out ~/output/description,
~/output/scene (JSON), /diagnostics, ~/debug/*_ms. Parameters: config/gmskip.param.yaml.

Example (no ROS 2 needed; Ctrl-C to stop; quote the ~ so the shell leaves it alone):

  ros2-gmskip node --transport dds --backend onnxruntime \
      --ros-args -r '~/input/image:=/sensing/camera/camera0/image_rect_color'
"""

from __future__ import annotations

import argparse

from ros2_gmskip.argtypes import existing_dir, existing_file, positive_float

HELP = 'run the gmskip_describer node (rclpy when sourced, else Cyclone DDS)'


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--transport', choices=('auto', 'rclpy', 'dds'), default='auto',
                        help='auto: rclpy when ROS 2 is sourced, else Cyclone DDS (default: auto)')
    parser.add_argument('--params-file', type=existing_file, metavar='F',
                        help='ROS 2 parameter file (/**: ros__parameters:) applied over the '
                             'defaults in config/gmskip.param.yaml')
    parser.add_argument('--backend', choices=('onnxruntime', 'tensorrt', 'torch'),
                        help='inference backend (parameter backend)')
    parser.add_argument('--model', type=existing_dir, metavar='DIR',
                        help='model folder (parameter model_path; default: the embedded model)')
    parser.add_argument('--plan', type=existing_file, metavar='F',
                        help='skip plan JSON (parameter plan_path)')
    parser.add_argument('--duration-s', type=positive_float, metavar='S',
                        help='stop after S seconds (default: run until Ctrl-C)')
    # test-only: 'module:function[:arg]' returning a Backend (the tests' FakeBackend)
    parser.add_argument('--backend-factory', help=argparse.SUPPRESS)
    parser.add_argument('--ros-args', dest='ros_args', nargs=argparse.REMAINDER, default=[],
                        help='ROS arguments for the node: -r from:=to, -p name:=value, '
                             '--params-file F (all following arguments)')


def to_ros_argv(args: argparse.Namespace) -> list[str]:
    """Return the options as node argv: `--ros-args --params-file F -p k:=v ... <ros args>`."""
    ros: list[str] = []
    if args.params_file:
        ros += ['--params-file', str(args.params_file)]
    for key, value in (('backend', args.backend), ('model_path', args.model),
                       ('plan_path', args.plan)):
        if value is not None:
            ros += ['-p', f'{key}:={value}']
    ros += list(args.ros_args or [])
    return ['ros2-gmskip-node'] + (['--ros-args'] + ros if ros else [])


def main(args: argparse.Namespace) -> int:
    from ros2_gmskip.ros.node import load_backend_factory, run

    factory = load_backend_factory(args.backend_factory) if args.backend_factory else None
    return run(to_ros_argv(args), transport=args.transport, duration_s=args.duration_s,
               backend_factory=factory)
