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
One validator for the node and the CLI: the schema's bounds, and prompts that fit the context.

The tiny test model has 128 positions: 16 image tokens plus a few template tokens leave room for
a prompt of about a hundred words.
"""

from __future__ import annotations

import argparse

from fakes import FakeBackend
import numpy as np
import pytest
from ros2_gmskip.argtypes import node_param
from ros2_gmskip.errors import PromptError
from ros2_gmskip.ros.params import check_value, node_schema, ParameterError
from ros2_gmskip.runtime.requests import check_request, context_length

LONG_PROMPT = 'describe the scene ' * 60          # 180 words: over the tiny model's 128
IMAGE = np.zeros((64, 64, 3), np.uint8)


def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert text and '\n' not in text, text
    return text


# ------------------------------------------------------------------------------------------------
# schema bounds: the command line refuses exactly what the node refuses

@pytest.mark.parametrize('key,texts', [
    ('draft_tokens', ['-1', '0', '16', '17', '1000', 'x', '2.5']),
    ('max_new_tokens', ['0', '1', '512', '513', 'ten']),
    ('max_image_pixels', ['0', '1', '50000000', '1000000000', '1000000001']),
    ('prompt', ['', ' ', '\t\n', 'describe the scene.', ' x ']),
])
def test_cli_and_node_refuse_the_same_values(key, texts):
    kind = node_schema()['properties'][key]['type']
    for text in texts:
        try:
            value = {'integer': int, 'string': str}[kind](text)
        except ValueError:
            value = text                      # not even of the type: the node refuses it too
        try:
            check_value(key, value)
            node_ok, node_reason = True, ''
        except ParameterError as err:
            node_ok, node_reason = False, str(err)
        try:
            node_param(key)(text)
            cli_ok, cli_reason = True, ''
        except argparse.ArgumentTypeError as err:
            cli_ok, cli_reason = False, str(err)
        assert cli_ok == node_ok, (key, text, node_reason, cli_reason)
        if not node_ok and isinstance(value, type(text)) and kind != 'integer':
            assert cli_reason == node_reason


def test_the_examples_of_the_issue():
    with pytest.raises(argparse.ArgumentTypeError,
                       match='1000 is greater than the maximum of 16'):
        node_param('draft_tokens')('1000')
    with pytest.raises(argparse.ArgumentTypeError, match="parameter 'prompt' = '  ': is blank"):
        node_param('prompt')('  ')
    with pytest.raises(ParameterError, match="parameter 'prompt' = ' ': is blank"):
        check_value('prompt', ' ')


# ------------------------------------------------------------------------------------------------
# prompt + max_new_tokens against the context

def test_check_request_numbers_and_advice():
    check_request('hi', prompt_tokens=70, max_new_tokens=186, context=256)
    with pytest.raises(PromptError) as excinfo:
        check_request('hi', prompt_tokens=70, max_new_tokens=187, context=256)
    assert one_line(excinfo) == (
        "prompt 'hi' is 70 tokens with the image; with max_new_tokens 187 that is 257, over the "
        "model's context of 256 positions: lower max_new_tokens to 186 or shorten the prompt")
    with pytest.raises(PromptError, match="is 300 tokens with the image, the model's context is "
                                          '256 positions: shorten the prompt'):
        check_request('x' * 100, prompt_tokens=300, max_new_tokens=1, context=256)
    with pytest.raises(PromptError, match='is empty'):
        check_request(' ', prompt_tokens=70, max_new_tokens=1, context=256)
    check_request('hi', prompt_tokens=10 ** 6, max_new_tokens=1, context=None)   # unknown: pass


def test_context_length_from_config():
    assert context_length({'text_config': {'max_position_embeddings': 256}}) == 256
    assert context_length({'max_position_embeddings': 4096}) == 4096
    assert context_length({'text_config': {}}) is None and context_length({}) is None


def test_onnxruntime_backend_refuses_a_prompt_over_the_context(tiny_bundle):
    from ros2_gmskip.runtime.ort_backend import OrtBackend
    backend = OrtBackend(tiny_bundle, threads=1)
    assert backend.context == 128
    backend.check_request('describe the scene.', 48)
    assert backend.describe(IMAGE, 'describe the scene.', 4).tokens >= 1
    with pytest.raises(PromptError) as excinfo:
        backend.describe(IMAGE, LONG_PROMPT, 4)
    assert "over the model's context of 128 positions" in one_line(excinfo) or \
        "the model's context is 128 positions" in one_line(excinfo)
    with pytest.raises(PromptError, match='lower max_new_tokens to'):
        backend.check_request('describe the scene.', 120)
    with pytest.raises(PromptError, match='is empty'):
        backend.describe(IMAGE, '   ', 4)


def test_torch_backend_refuses_a_prompt_over_the_context(tiny_model_dir):
    from ros2_gmskip.vlm.torch_backend import TorchBackend
    backend = TorchBackend(tiny_model_dir)
    assert backend.context == 128
    backend.check_request('describe the scene.', 48)
    with pytest.raises(PromptError, match='context'):
        backend.describe(IMAGE, LONG_PROMPT, 4)
    with pytest.raises(PromptError, match='lower max_new_tokens to'):
        backend.check_request('describe the scene.', 120)


class ContextBackend(FakeBackend):
    """A fake backend with a 128-position context: one token per word, 20 for the image."""

    def check_request(self, prompt: str, max_new_tokens: int) -> None:
        check_request(prompt, 20 + len(prompt.split()), max_new_tokens, 128)


def test_node_refuses_such_a_prompt_at_start_and_when_set():
    from ros2_gmskip.ros.pipeline import DescriberCore
    from ros2_gmskip.ros.params import load_params
    with pytest.raises(PromptError, match='max_new_tokens 200'):
        DescriberCore(ContextBackend(), load_params(overrides={'max_new_tokens': 200}),
                      publish=lambda out: None)

    from ros2_gmskip.ros.dds_transport import DdsTransport
    from ros2_gmskip.ros.node import GmSkipDescriber
    import random
    transport = DdsTransport('gmskip_describer', ['prog'], domain_id=random.randint(100, 200))
    node = GmSkipDescriber(transport, backend_factory=lambda params, **_: ContextBackend())
    try:
        ok, reason = node.parameters_callback({'prompt': LONG_PROMPT})
        assert not ok and "the model's context is 128 positions" in reason, reason
        ok, reason = node.parameters_callback({'max_new_tokens': 120})
        assert not ok and 'lower max_new_tokens to 105' in reason, reason   # 20 + 3 words
        assert node.parameters_callback({'max_new_tokens': 100}) == (True, '')
        assert node.core.params.max_new_tokens == 100
    finally:
        node.destroy_node()
