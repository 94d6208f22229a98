"""The web tier's one strict decode (api/exchange/body.py): what it accepts, the worker can run."""

from __future__ import annotations

import msgspec
import pytest

from api.exchange.body import MAX_DEPTH, decode_json
from common.errors import GatewayError
from common.wire import ChatRequest

HEAD = b'{"model":"m","messages":[{"role":"user","content":"hi"}],'


def refusal(body: bytes) -> tuple[str, str | None]:
    with pytest.raises(GatewayError) as info:
        decode_json(body, ChatRequest)
    assert info.value.status == 400
    envelope = msgspec.json.decode(info.value.body())
    assert envelope["error_type"] == "invalid_request"
    return envelope["error"]["message"], envelope["error"]["param"]


@pytest.mark.parametrize(("tail", "param"), [
    (b'"x":"\xff"}', "x"),
    (b'"x":["ok","\xc3"]}', "x[1]"),
    (b'"x":"\\ud800"}', "x"),  # a lone surrogate escape: no UTF-8 encoder can forward it
    (b'"x":{"\xff":1}}', None),
    (b'"x":1e999}', "x"),
    (b'"x":[0,-1e400]}', "x[1]"),
    (b'"x":NaN}', "x"),
    (b'"seed":9223372036854775808}', "seed"),
    (b'"x":{"y":[-9223372036854775809]}}', "x.y[0]"),
    (b'"max_tokens":18446744073709551616}', "max_tokens"),
])
def test_values_the_worker_cannot_forward_are_named(tail: bytes, param: str | None) -> None:
    message, named = refusal(HEAD + tail)
    assert named == param, message


def test_int64_and_float_edges_pass() -> None:
    chat = decode_json(HEAD + b'"seed":9223372036854775807,"x":[-9223372036854775808,1e308,-0.0]}', ChatRequest)
    assert chat.seed == 2**63 - 1


def test_depth_limit() -> None:
    nested = b"[" * (MAX_DEPTH - 1) + b"]" * (MAX_DEPTH - 1)  # inside the body object: MAX_DEPTH levels
    decode_json(HEAD + b'"x":' + nested + b"}", ChatRequest)
    message, param = refusal(HEAD + b'"x":[' + nested + b"]}")
    assert param == "x" and str(MAX_DEPTH) in message
    message, _ = refusal(HEAD + b'"x":' + b"[" * 5000 + b"]" * 5000 + b"}")  # beyond the parser's own limit
    assert str(MAX_DEPTH) in message


def test_malformed_json_and_schema_errors_keep_their_messages() -> None:
    message, param = refusal(b'{"model":"m",')
    assert "not valid JSON" in message and param is None
    message, param = refusal(b'{"model":"m","messages":[{"role":"robot"}]}')
    assert param == "messages[0].role"
    # "model" may be left out when "models" names the candidates (OpenRouter): the planner refuses a body
    # with neither, naming "model" (tests/test_preferences.py::test_models_alone_and_as_fallbacks)
    assert decode_json(b'{"messages":[{"role":"user"}],"models":["m"]}', ChatRequest).model is None
    message, param = refusal(b"[1]")
    assert param is None


def test_model_ids_are_bounded() -> None:
    _, param = refusal(b'{"model":"' + b"m" * 257 + b'","messages":[{"role":"user","content":"hi"}]}')
    assert param == "model"
    _, param = refusal(HEAD + b'"models":["ok","' + b"m" * 257 + b'"]}')
    assert param == "models[1]"
