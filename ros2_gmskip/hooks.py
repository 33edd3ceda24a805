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
Load user code named as 'module:function' (custom metrics, object parsers) with one-line errors.

    metric = load_callable('my_metrics:recall_at_1', 'metric', MetricError)
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

from ros2_gmskip.errors import GmSkipError


def load_callable(spec: str, what: str, error: type[GmSkipError]) -> Callable[..., Any]:
    """Return the callable `spec` ('module:function') names; `error` in one line otherwise."""
    module_name, sep, func_name = str(spec).partition(':')
    if not sep or not module_name or not func_name:
        raise error(f'{what} {spec!r} is not module:function: name a function to import, '
                    'e.g. my_package.my_module:my_function')
    try:
        func = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as err:
        raise error(f'cannot import {what} {spec!r}: {err}: check the name and that the module '
                    'is on PYTHONPATH') from err
    if not callable(func):
        raise error(f'{what} {spec!r} is a {type(func).__name__}, not a function')
    return func
