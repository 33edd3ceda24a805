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
`ros2-gmskip <verb>`: the command-line entry point.

Each verb lives in `ros2_gmskip/verbs/<verb>.py` and exposes `HELP` (one line),
`add_arguments(parser)` and `main(args) -> int`. Verb modules import heavy libraries (torch,
transformers) inside `main`, so `--help` stays fast. Expected failures (`GmSkipError`) print one
line, `error: ...`, and return 1.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import sys
from typing import Sequence

from ros2_gmskip import __version__
from ros2_gmskip.errors import GmSkipError
from ros2_gmskip.folders import WRITE_ERRNOS

# verb name -> module under ros2_gmskip.verbs, in the order `--help` lists them (pipeline order).
VERBS: dict[str, str] = {
    'demo': 'demo',
    'scenes': 'scenes',
    'train': 'train',
    'evaluate': 'evaluate',
    'describe': 'describe',
    'calibrate': 'calibrate',
    'ladder': 'ladder',
    'prune': 'prune',
    'heal': 'heal',
    'draft': 'draft',
    'export': 'export',
    'build-engine': 'build_engine',
    'bench': 'bench',
    'make-bag': 'make_bag',
    'replay': 'replay',
    'node': 'node',
}


def _available_verbs() -> dict[str, object]:
    """Import the verb modules that exist (light imports only)."""
    verbs = {}
    for name, module in VERBS.items():
        try:
            verbs[name] = importlib.import_module(f'ros2_gmskip.verbs.{module}')
        except ModuleNotFoundError as err:
            if err.name != f'ros2_gmskip.verbs.{module}':
                raise
    return verbs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='ros2-gmskip',
        description='GM-Skip: metric-guided block skipping for driving-scene VLMs, '
                    'from calibration to a ROS 2 node. Pipeline: scenes -> train -> evaluate -> '
                    'calibrate -> prune/export -> build-engine -> make-bag/replay/node.',
        epilog="Run `ros2-gmskip <verb> --help` for a verb's options and examples. "
               'Exit status: 0 done; 1 an expected failure, printed as one line '
               "'error: ...' (bad input, a file that cannot be read or written, a plan for "
               'another model, ...); 2 a malformed command line (argparse); 130 interrupted.')
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    parser.add_argument('-v', '--verbose', action='store_true', help='log at DEBUG level')
    sub = parser.add_subparsers(dest='verb', metavar='<verb>')
    for name, module in _available_verbs().items():
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_main=module.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format='%(levelname)s %(name)s: %(message)s')
    if not getattr(args, '_main', None):
        parser.print_help()
        return 0
    try:
        return int(args._main(args) or 0)
    except GmSkipError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    except OSError as err:                # a disk or permission problem no verb foresaw
        if err.errno not in WRITE_ERRNOS | {errno.EACCES, errno.EPERM}:
            raise                         # anything else is a bug: keep the traceback
        where = f' {str(err.filename)!r}' if err.filename else ''
        print(f'error: {err.strerror}:{where}: check the permissions and the free space there, '
              'or choose another path', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130


if __name__ == '__main__':
    sys.exit(main())
