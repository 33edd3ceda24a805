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

"""Narrow exceptions for expected failures; the CLI prints them as one line, the node logs them."""

from __future__ import annotations


class GmSkipError(Exception):
    """Base class: an expected, user-facing failure whose message says what to do."""


class ModelLoadError(GmSkipError):
    """A model folder is missing, incomplete, corrupt or of an unsupported architecture."""


class ImageError(GmSkipError):
    """An image file or message could not be decoded into the model's RGB input."""


class DatasetError(GmSkipError):
    """A calibration / evaluation data folder is missing, empty or malformed."""


class MetricError(GmSkipError):
    """A metric is unknown, raised, or returned a non-finite value."""


class PlanError(GmSkipError):
    """A skip plan is malformed, for another model, or its indices are invalid."""


class BundleError(GmSkipError):
    """An ONNX bundle is missing files, corrupt, or does not match its manifest."""


class EngineError(GmSkipError):
    """A TensorRT engine is missing, corrupt, or built for another GPU / TensorRT version."""


class BagError(GmSkipError):
    """A rosbag cannot be opened, or is truncated / corrupt beyond the part already read."""


class OutputError(GmSkipError):
    """An output cannot be written: no permission, a read-only or full disk, a file in the way."""


class PromptError(GmSkipError):
    """A prompt is empty, or with the image and max_new_tokens does not fit the model's context."""


class MessageError(GmSkipError):
    """A ROS message cannot be converted (unknown encoding, short data, zero size, ...)."""
