"""``POST /moderations`` end to end: the OpenAI SDK through the queue to the strict fake OpenAI; free."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.fakes.openai_server import OpenAIFakeState
from tests.harness import GatewayHarness, auth


def test_text_and_image_parts(client: openai.OpenAI, fake_openai: tuple[OpenAIFakeState, str]) -> None:
    raw = client.moderations.with_raw_response.create(input=["I will kill the process", "have a nice day"])
    result = raw.parse()
    assert [r.flagged for r in result.results] == [True, False]
    assert result.results[0].categories.violence and result.results[0].category_scores.violence == 0.91
    assert result.model == "openai/omni-moderation-latest" and result.id.startswith("modr-")
    assert raw.http_response.json()["usage"] == {"cost": 0}  # OpenAI does not charge for moderation
    parts = client.moderations.create(model="omni-moderation-latest", input=[
        {"type": "text", "text": "a photo"}, {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}])
    assert parts.results[0].category_applied_input_types.violence == ["text", "image"]
    record = client.get("/generation", cast_to=object, options={"params": {"id": result.id}})["data"]
    assert record["model"] == "openai/omni-moderation-latest" and record["total_cost"] == 0
    assert fake_openai[0].requests[0]["body"]["model"] == "omni-moderation-latest"  # OpenAI's default, sent


def test_free_without_a_key(gateway: GatewayHarness) -> None:
    response = httpx.post(gateway.url + "/v1/moderations", json={"input": "hello"}, timeout=20)
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["flagged"] is False


@pytest.mark.parametrize(
    "payload, param",
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["ok", ""]}, "input"),
        ({"input": [{"type": "audio"}]}, "input[0]"),
        ({"model": "text-moderation-latest",
          "input": [{"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}]}, "input[0]"),
        ({"model": "gpt-4o-mini", "input": "x"}, "model"),
        ({}, "input"),
    ],
)
def test_refused_before_any_upstream_call(gateway: GatewayHarness, gateway_env: dict[str, str],
                                          fake_openai: tuple[OpenAIFakeState, str], payload: dict,
                                          param: str) -> None:
    response = httpx.post(gateway.url + "/v1/moderations", json=payload, headers=auth(gateway_env), timeout=20)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert fake_openai[0].requests == []
