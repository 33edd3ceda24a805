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
The `gmskip_describer` node: camera image in, scene description + latency statistics out.

Topics (private names resolve to /<namespace>/gmskip_describer/...):
  in   ~/input/image                sensor_msgs/Image            (sensor-data QoS)
  in   ~/input/image/compressed     sensor_msgs/CompressedImage  (when use_compressed)
  out  ~/output/description         std_msgs/String              the text
  out  ~/output/scene               std_msgs/String              JSON: stamp, frame_id, text, ...
  out  /diagnostics                 diagnostic_msgs/DiagnosticArray
  out  ~/debug/processing_time_ms, ~/debug/pipeline_latency_ms, ~/debug/cyclic_time_ms
                                    autoware_internal_debug_msgs/Float64Stamped

Run (quote `~`, or the shell expands it to $HOME):
    ros2 run ros2_gmskip gmskip_describer --ros-args -r '~/input/image:=/sensing/camera/...'
or, without ROS 2, the same with `gmskip_describer --transport dds --ros-args ...`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
from pathlib import Path
import sys
from typing import Any, Callable, Sequence

from ros2_gmskip.errors import GmSkipError, PromptError
from ros2_gmskip.ros.messages import (
    DEBUG_TOPICS,
    DESCRIPTION,
    DIAGNOSTIC_NAME,
    diagnostics_message,
    FLOAT64_STAMPED,
    SCENE,
    scene_messages,
)
from ros2_gmskip.ros.params import (
    DescriberParams,
    descriptions,
    load_defaults,
    NODE_NAME,
    ParameterError,
)
from ros2_gmskip.ros.pipeline import DescriberCore, format_value, SceneOutput
from ros2_gmskip.ros.transport import QOS_DEFAULT, QOS_SENSOR, remove_ros_args, select_transport

__all__ = ['DEBUG_TOPICS', 'DIAGNOSTIC_NAME', 'FLOAT64_STAMPED', 'GmSkipDescriber', 'main', 'run']
# parameters that may change while running (the rest are read once, at start-up)
LIVE_PARAMETERS = ('prompt', 'max_new_tokens', 'input_timeout_s', 'latency_warn_ms',
                   'drop_warn_ratio', 'latency_budget_ms')

BackendFactory = Callable[..., Any]     # (params, build_only=False) -> Backend


def diagnostic_name(namespace: str, node_name: str) -> str:
    """Return the status name: '<namespace>/<node>: inference', so cameras stay apart."""
    return f'{namespace.strip("/")}/{node_name}: inference'.lstrip('/')


def create_backend(params: DescriberParams, build_only: bool = False) -> Any:
    """
    Create the backend the parameters ask for, through `ros2_gmskip.runtime.factory` (lazy).

    Empty paths mean the embedded default: the default model with its shipped skip plan, and for
    onnxruntime / tensorrt its ONNX bundle (exported once into the cache when missing).
    """
    from ros2_gmskip.runtime import defaults
    from ros2_gmskip.runtime.factory import create_backend as factory

    def path(text: str) -> Path | None:
        return Path(text).expanduser() if text else None

    kind = params.backend
    model, plan = path(params.model_path), path(params.plan_path)
    bundle, engine = path(params.bundle_path), path(params.engine_path)
    if model is None and plan is None:
        plan = defaults.default_plan_path()
    opts: dict[str, Any] = {}
    ladder = None               # a given bundle brings its own ladder (export --ladder) or none
    if (params.latency_budget_ms > 0 or params.rung != 'auto') and (
            kind == 'torch' or bundle is None):
        ladder = opts['ladder'] = _ladder_path(plan, params)
    if kind in ('onnxruntime', 'tensorrt') and bundle is None:
        bundle = defaults.ensure_bundle(model, plan, fused_weights=params.fused_weights
                                        if kind == 'onnxruntime' else 'fp32',
                                        **({'ladder': ladder} if ladder else {}))
    if kind == 'onnxruntime':
        opts['providers'] = _ort_provider(params.device)
        opts['draft_tokens'] = params.draft_tokens
    elif kind == 'torch':
        opts['device'] = _torch_device(params.device, params.gpu_id)
    elif kind == 'tensorrt':
        opts.update(device=params.gpu_id, precision=params.precision)
    return factory(kind, model=model, plan=plan, bundle=bundle, engine=engine,
                   build_only=build_only, **opts)


def _ladder_path(plan: Path | None, params: DescriberParams) -> Path:
    """Return the plan ladder beside `plan` (calibrate writes `<plan>.ladder.json`)."""
    from ros2_gmskip.gmskip.ladder import ladder_path
    from ros2_gmskip.runtime.ladder import LadderError

    if plan is None:
        what = (f'latency_budget_ms {params.latency_budget_ms:g}' if params.latency_budget_ms > 0
                else f'rung {params.rung!r}')
        raise LadderError(f'{what} needs a skip plan with a ladder: set plan_path (calibrate '
                          'writes <plan>.ladder.json beside it)')
    return ladder_path(plan)


def _ort_provider(device: str) -> str:
    """'cpu' | 'cuda'; auto = CUDA when this onnxruntime build has it."""
    if device != 'auto':
        return device
    import onnxruntime

    return 'cuda' if 'CUDAExecutionProvider' in onnxruntime.get_available_providers() else 'cpu'


def _torch_device(device: str, gpu_id: int) -> str:
    if device == 'auto':
        import torch

        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    return f'cuda:{gpu_id}' if device == 'cuda' else 'cpu'


class GmSkipDescriber:
    """The node, over any `Transport` (rclpy or Cyclone DDS)."""

    def __init__(self, transport: Any, backend_factory: BackendFactory | None = None) -> None:
        self.transport = transport
        self.logger = transport.logger
        self.diagnostic_name = diagnostic_name(transport.namespace, transport.node_name)
        values = transport.declare_parameters(load_defaults(), descriptions())
        self.params = DescriberParams.from_dict(values)
        transport.on_set_parameters(self.parameters_callback)
        self.build_only = self.params.build_only
        factory = backend_factory or create_backend
        if self.build_only:
            backend = factory(self.params, build_only=True)
            self.logger.info(f'build_only: backend {getattr(backend, "name", "?")} is ready '
                             f'({_info_text(backend)}); exiting')
            self.core = None
            return
        backend = factory(self.params)
        self.logger.info(f'backend {getattr(backend, "name", "?")} loaded ({_info_text(backend)})')
        self.core = DescriberCore(backend, self.params, publish=self.publish_callback,
                                  logger=self.logger)

        if self.params.use_compressed:
            topic, msgtype, compressed = ('~/input/image/compressed',
                                          'sensor_msgs/msg/CompressedImage', True)
        else:
            topic, msgtype, compressed = '~/input/image', 'sensor_msgs/msg/Image', False
        self.image_sub = transport.create_subscription(
            topic, msgtype, lambda msg: self.core.on_image(msg, compressed), qos=QOS_SENSOR)
        self.description_pub = transport.create_publisher(
            DESCRIPTION, 'std_msgs/msg/String', qos=QOS_DEFAULT)
        self.scene_pub = transport.create_publisher(
            SCENE, 'std_msgs/msg/String', qos=QOS_DEFAULT)
        self.diagnostics_pub = transport.create_publisher(
            '/diagnostics', 'diagnostic_msgs/msg/DiagnosticArray', qos=QOS_DEFAULT)
        self.debug_pubs: dict[str, Any] = {}
        if self.params.publish_debug:
            if transport.has_type(FLOAT64_STAMPED):
                self.debug_pubs = {name: transport.create_publisher(
                    f'~/debug/{name}', FLOAT64_STAMPED, qos=QOS_DEFAULT) for name in DEBUG_TOPICS}
            else:
                self.logger.warning(f'{FLOAT64_STAMPED} is not installed: ~/debug/* topics are '
                                    f'off (install autoware_internal_debug_msgs for them)')
        self.diagnostics_timer = transport.create_timer(
            self.params.diagnostics_period_s, self.diagnostics_callback)
        self.core.start()
        resolved = getattr(self.image_sub, 'topic_name', None) or (
            transport.resolve_topic(topic) if hasattr(transport, 'resolve_topic') else topic)
        self.logger.info(f'{transport.kind}: {transport.namespace.rstrip("/")}/'
                         f'{transport.node_name} describes {resolved} ({msgtype})')

    # ------------------------------------------------------------------------------------------
    # callbacks

    def publish_callback(self, out: SceneOutput) -> None:
        """Publish one description from the worker thread (text, scene JSON, debug timings)."""
        t = self.transport
        publishers = {DESCRIPTION: self.description_pub, SCENE: self.scene_pub,
                      **{f'~/debug/{name}': pub for name, pub in self.debug_pubs.items()}}
        for topic, msgtype, fields in scene_messages(out, t.now(), debug=bool(self.debug_pubs)):
            publishers[topic].publish(t.make_message(msgtype, **fields))

    def diagnostics_callback(self) -> None:
        """Publish the core's status on /diagnostics (timer)."""
        _, msgtype, fields = diagnostics_message(self.core.diagnostics(), self.transport.now(),
                                                 self.diagnostic_name)
        self.diagnostics_pub.publish(self.transport.make_message(msgtype, **fields))

    def parameters_callback(self, changes: dict[str, Any]) -> tuple[bool, str]:
        """Validate a run-time parameter change; apply the live ones, refuse the others."""
        fixed = sorted(set(changes) - set(LIVE_PARAMETERS))
        if fixed:
            return False, (f'{", ".join(fixed)} are read once at start-up: restart '
                           f'{NODE_NAME} to change them')
        try:
            params = DescriberParams.from_dict(dict(self.params.to_dict(), **changes))
            if self.core is not None:
                self.core.check_request(params)     # the prompt must fit the model's context
        except (ParameterError, PromptError) as err:
            return False, str(err)
        if self.core is not None and params.latency_budget_ms != self.params.latency_budget_ms:
            try:
                self.core.set_latency_budget(params.latency_budget_ms)
            except GmSkipError as err:
                return False, str(err)
        self.params = params
        if self.core is not None:
            self.core.params = params
        return True, ''

    # ------------------------------------------------------------------------------------------

    def destroy_node(self) -> None:
        """Stop the worker, then the transport (the rclpy Node is destroyed with it)."""
        if self.core is not None:
            self.core.stop()
        self.transport.shutdown()


def _info_text(backend: Any) -> str:
    info = backend.info.to_dict()
    return ', '.join(f'{k}={format_value(v)}' for k, v in info.items()) or 'no info'


def load_backend_factory(spec: str) -> BackendFactory:
    """'module:function[:arg]' -> params -> function(arg) (test hook: inject a fake backend)."""
    module, _, rest = spec.partition(':')
    func, _, arg = rest.partition(':')
    if not module or not func:
        raise GmSkipError(f'malformed backend factory {spec!r}: expected module:function[:arg]')
    fn = getattr(importlib.import_module(module), func)
    return lambda params, **_: fn(arg) if arg else fn()


def run(argv: Sequence[str], transport: str = 'auto', duration_s: float | None = None,
        backend_factory: BackendFactory | None = None) -> int:
    """Run the node until Ctrl-C / shutdown / `duration_s`; argv carries the --ros-args."""
    transport_cls = select_transport(transport)
    transport_cls.init(argv)
    node = None
    transport_obj = None
    try:
        transport_obj = transport_cls(NODE_NAME, argv)
        with _routed_logging(transport_obj):
            node = GmSkipDescriber(transport_obj, backend_factory=backend_factory)
            if not node.build_only:
                transport_obj.spin(duration_s)
    except (KeyboardInterrupt, *transport_cls.shutdown_exceptions()):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        elif transport_obj is not None:
            transport_obj.shutdown()
        transport_cls.try_shutdown()
    return 0


def _routed_logging(transport: Any) -> contextlib.AbstractContextManager:
    """Send the package's `logging` records to the rclpy node's logger (rosout, timestamps)."""
    if transport.kind != 'rclpy':
        return contextlib.nullcontext()
    from ros2_gmskip.ros.ros_logging import routed_to

    return routed_to(transport.node.get_logger())


def main(args: Sequence[str] | None = None) -> int:
    """Run the console script `gmskip_describer` (ros2 run / launch): rclpy if found, else DDS."""
    argv = list(sys.argv if args is None else args)
    parser = argparse.ArgumentParser(prog=NODE_NAME, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--transport', choices=('auto', 'rclpy', 'dds'), default='auto',
                        help='auto: rclpy when ROS 2 is sourced, else Cyclone DDS (default)')
    parser.add_argument('--duration-s', type=float, default=None,
                        help='stop after this many seconds (default: run until Ctrl-C)')
    # test-only: 'module:function[:arg]' returning a Backend, e.g.
    # ros2_gmskip.runtime.factory:create_backend:fake:25 (no model needed)
    parser.add_argument('--backend-factory', help=argparse.SUPPRESS)
    options = parser.parse_args(remove_ros_args(argv)[1:])
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format='[%(levelname)s] [%(name)s]: %(message)s')
    try:
        factory = load_backend_factory(options.backend_factory) \
            if options.backend_factory else None
        return run(argv, transport=options.transport, duration_s=options.duration_s,
                   backend_factory=factory)
    except GmSkipError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
