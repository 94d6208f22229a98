"""``POST /images/generations`` end to end: the OpenAI SDK through the queue to the strict fake OpenAI.

gpt-image-1 (b64 only, billed per token) and dall-e-3 (url or b64, billed per image); a multi-megabyte
answer in bounded parts; ``n`` images reserved at admission; refusals before any upstream call.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from decimal import Decimal

import httpx
import openai
import pytest

from tests.fakes.gemini_server import GeminiFakeState, create_gemini_app, gemini_image
from tests.fakes.openai_more import edited_bytes, image_bytes
from tests.fakes.openai_server import OpenAIFakeState
from tests.fakes.server import ThreadedServer
from tests.harness import GatewayHarness, auth, create_key, env_for, sdk_for, with_test_key


def generation(client: openai.OpenAI, request_id: str) -> dict:
    return client.get("/generation", cast_to=object, options={"params": {"id": f"gen-{request_id}"}})["data"]


def test_gpt_image_billed_per_token(client: openai.OpenAI, fake_openai: tuple[OpenAIFakeState, str]) -> None:
    raw = client.images.with_raw_response.generate(model="gpt-image-1", prompt="a red cat", n=2,
                                                   size="1024x1024", quality="low")
    result = raw.parse()
    assert [base64.b64decode(d.b64_json) for d in result.data] == [image_bytes("a red cat", i, 2048)
                                                                   for i in range(2)]
    assert result.usage is not None and result.usage.output_tokens == 2 * 272
    cost = Decimal("5E-6") * 2 + Decimal("40E-6") * 544  # genai-prices: text input, image output per token
    assert Decimal(str(raw.http_response.json()["usage"]["cost"])) == cost
    assert raw.headers["content-type"] == "application/json"
    record = generation(client, raw.headers["x-request-id"])
    assert record["model"] == "openai/gpt-image-1" and Decimal(str(record["total_cost"])) == cost
    sent = fake_openai[0].requests[-1]
    assert sent["path"] == "/v1/images/generations"
    assert sent["body"] == {"model": "gpt-image-1", "prompt": "a red cat", "n": 2, "size": "1024x1024",
                            "quality": "low"}


def test_dall_e_3_url_billed_per_image(client: openai.OpenAI) -> None:
    raw = client.images.with_raw_response.generate(model="dall-e-3", prompt="a lighthouse", size="1792x1024",
                                                   quality="hd", response_format="url", style="natural")
    result = raw.parse()
    assert result.data[0].url and result.data[0].revised_prompt == "A revised a lighthouse"
    assert Decimal(str(raw.http_response.json()["usage"]["cost"])) == Decimal("0.12")  # hd, wide
    assert Decimal(str(generation(client, raw.headers["x-request-id"])["total_cost"])) == Decimal("0.12")


def test_large_answer_travels_in_parts(client: openai.OpenAI, fake_openai: tuple[OpenAIFakeState, str]) -> None:
    fake_openai[0].image_size = 1_500_000  # two images: ~4 MB of JSON, crossing Redis in bounded parts
    result = client.images.generate(model="dall-e-2", prompt="big", n=2, response_format="b64_json")
    assert [base64.b64decode(d.b64_json) for d in result.data] == [image_bytes("big", i, 1_500_000)
                                                                   for i in range(2)]


@pytest.mark.parametrize(
    "payload, param",
    [
        ({"model": "gpt-image-1", "prompt": "x", "n": 0}, "n"),
        ({"model": "gpt-image-1", "prompt": "x", "n": 11}, "n"),
        ({"model": "dall-e-3", "prompt": "x", "n": 2}, "n"),
        ({"model": "dall-e-3", "prompt": "x", "size": "512x512"}, "size"),
        ({"model": "dall-e-3", "prompt": "x", "quality": "high"}, "quality"),
        ({"model": "gpt-image-1", "prompt": "x", "response_format": "url"}, "response_format"),
        ({"model": "gpt-image-1", "prompt": "x", "style": "vivid"}, "style"),
        ({"model": "dall-e-3", "prompt": "x", "background": "transparent"}, "background"),
        ({"model": "gpt-image-1", "prompt": ""}, "prompt"),
        ({"model": "gpt-image-1"}, "prompt"),
        ({"model": "gpt-4o-mini", "prompt": "x"}, "model"),
    ],
)
def test_refused_before_any_upstream_call(gateway: GatewayHarness, gateway_env: dict[str, str],
                                          fake_openai: tuple[OpenAIFakeState, str], payload: dict,
                                          param: str) -> None:
    response = httpx.post(gateway.url + "/v1/images/generations", json=payload, headers=auth(gateway_env),
                          timeout=20)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert fake_openai[0].requests == []


@pytest.fixture
def tight_budget(redis_url: str, fake_openai: tuple[OpenAIFakeState, str]) -> Iterator[tuple[GatewayHarness, str]]:
    """A key with $1 a month: one high-quality gpt-image-1 image fits (at most $0.25), ten do not."""
    env = env_for(redis_url, OPENAI_BASE_URL=fake_openai[1], OPENAI_API_KEY="sk-upstream-test")
    key = create_key(redis_url, env["MEGABRAIN_NAMESPACE"], "images", monthly_budget=1.0)
    with GatewayHarness.from_env(env) as harness:
        yield harness, key


def test_worst_case_of_n_images_reserved(tight_budget: tuple[GatewayHarness, str],
                                         fake_openai: tuple[OpenAIFakeState, str]) -> None:
    harness, key = tight_budget
    client = openai.OpenAI(base_url=harness.url + "/v1", api_key=key, max_retries=0, timeout=20)
    with pytest.raises(openai.APIStatusError) as refused:
        client.images.generate(model="gpt-image-1", prompt="x", n=10, quality="high")
    assert refused.value.status_code == 402
    assert fake_openai[0].requests == []
    assert len(client.images.generate(model="gpt-image-1", prompt="x", n=1, quality="high").data) == 1


def test_listed_as_image_models(gateway: GatewayHarness) -> None:
    listed = {m["id"]: m for m in httpx.get(gateway.url + "/v1/image-models", timeout=20).json()["data"]}
    assert listed["openai/dall-e-3"]["pricing"]["image"] == "0.04"  # standard, 1024x1024
    assert listed["openai/gpt-image-1"]["pricing"]["completion"] == "0.00004"  # per image output token
    assert listed["openai/gpt-image-1"]["pricing"]["input_image"] == "0.00001"
    assert listed["openai/gpt-image-1.5"]["pricing"]["completion"] == "0.000032"  # image output, not text
    assert listed["openai/gpt-image-1"]["architecture"]["output_modalities"] == ["image"]
    chat = {m["id"] for m in httpx.get(gateway.url + "/v1/models", timeout=20).json()["data"]}
    assert not chat & set(listed)


# -- /images/edits -------------------------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40


def test_edit_with_several_images(client: openai.OpenAI, fake_openai: tuple[OpenAIFakeState, str]) -> None:
    second = b"\x89PNG\r\n\x1a\n" + b"second" * 100
    raw = client.images.with_raw_response.edit(model="gpt-image-1", prompt="merge them", quality="low",
                                               image=[("a.png", PNG, "image/png"), ("b.png", second, "image/png")])
    result = raw.parse()
    assert base64.b64decode(result.data[0].b64_json or "") == edited_bytes("merge them", [PNG, second], 0, 2048)
    cost = Decimal("5E-6") * 10 + Decimal("10E-6") * 90 + Decimal("40E-6") * 272  # text, image in; image out
    assert Decimal(str(raw.http_response.json()["usage"]["cost"])) == cost
    sent = fake_openai[0].requests[-1]
    assert sent["path"] == "/v1/images/edits"
    assert sent["body"]["model"] == "gpt-image-1" and sent["body"]["quality"] == "low"
    assert [f[0] for f in sent["body"]["_files"]["image[]"]] == ["a.png", "b.png"]


def test_dall_e_2_edit_with_mask(client: openai.OpenAI) -> None:
    result = client.images.edit(model="dall-e-2", prompt="add a hat", image=("cat.png", PNG, "image/png"),
                                mask=("mask.png", PNG, "image/png"), n=2, size="512x512", response_format="url")
    assert [bool(d.url) for d in result.data] == [True, True]


@pytest.mark.parametrize(
    "files, data, status, param",
    [
        ({"image": ("a.png", b"\x89PNG" + b"x" * (5 << 20), "image/png")}, {"model": "dall-e-2", "prompt": "p"},
         413, "image"),  # dall-e-2 takes 4 MB
        ({"image": ("a.png", b"x" * (30 << 20), "image/png")}, {"model": "gpt-image-1", "prompt": "p"},
         413, "image"),  # over the gateway's 25 MB upload limit
        ({}, {"model": "gpt-image-1", "prompt": "p"}, 400, "image"),
        ({"image": ("a.png", PNG, "image/png")}, {"model": "dall-e-3", "prompt": "p"}, 400, "model"),
        ({"image": ("a.png", PNG, "image/png")}, {"model": "gpt-image-1", "prompt": "p", "n": "0"}, 400, "n"),
        ({"image": ("a.png", PNG, "image/png")}, {"model": "gpt-image-1"}, 400, "prompt"),
    ],
)
def test_edit_refused_before_any_upstream_call(gateway: GatewayHarness, gateway_env: dict[str, str],
                                               fake_openai: tuple[OpenAIFakeState, str], files: dict, data: dict,
                                               status: int, param: str) -> None:
    response = httpx.post(gateway.url + "/v1/images/edits", data=data, files=files or {"x": ("", b"", "text/plain")}
                          if not files else files, headers=auth(gateway_env), timeout=60)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    assert fake_openai[0].requests == []


# -- Gemini's image output -----------------------------------------------------------------------------------


@pytest.fixture
def gemini_images(redis_url: str) -> Iterator[tuple[GeminiFakeState, GatewayHarness, dict[str, str]]]:
    state = GeminiFakeState()
    with ThreadedServer(create_gemini_app(state)) as server:
        env = with_test_key(env_for(redis_url, GEMINI_BASE_URL=server.url, GEMINI_API_KEY=state.api_key))
        with GatewayHarness.from_env(env, pools=("google",)) as harness:
            yield state, harness, env


def test_gemini_image_output(gemini_images: tuple[GeminiFakeState, GatewayHarness, dict[str, str]]) -> None:
    state, harness, env = gemini_images
    raw = sdk_for(harness.url, env).images.with_raw_response.generate(
        model="google/gemini-2.5-flash-image", prompt="a fox in snow", size="1536x1024")
    result = raw.parse()
    assert base64.b64decode(result.data[0].b64_json or "") == gemini_image("a fox in snow", "3:2")
    sent = state.requests[-1]
    assert sent["method"] == "generateContent" and sent["key_ok"]
    assert sent["body"]["generationConfig"] == {"responseModalities": ["IMAGE"], "imageConfig": {"aspectRatio": "3:2"}}
    usage = raw.http_response.json()["usage"]
    assert usage["output_tokens"] == 1290  # billed at the image output rate ($30 per million), not text's
    prompt_tokens = usage["input_tokens"]
    assert Decimal(str(usage["cost"])) == Decimal("3E-7") * prompt_tokens + Decimal("0.00003") * 1290


def test_gemini_image_refusals(gemini_images: tuple[GeminiFakeState, GatewayHarness, dict[str, str]]) -> None:
    state, harness, env = gemini_images
    for payload, param in (({"n": 2}, "n"), ({"response_format": "url"}, "response_format"),
                           ({"size": "256x256"}, "size")):
        response = httpx.post(harness.url + "/v1/images/generations", headers=auth(env), timeout=20,
                              json={"model": "google/gemini-2.5-flash-image", "prompt": "x", **payload})
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text
    assert state.requests == []


def test_xai_images_billed_per_image(redis_url: str, fake_openai: tuple[OpenAIFakeState, str]) -> None:
    """xAI's images API (OpenAI's shape; n and response_format only) at $0.07 an image."""
    env = with_test_key(env_for(redis_url, XAI_BASE_URL=fake_openai[1], XAI_API_KEY="xai-test"))
    with GatewayHarness.from_env(env, pools=("xai",)) as harness:
        client = sdk_for(harness.url, env)
        raw = client.images.with_raw_response.generate(model="xai/grok-2-image-1212", prompt="a robot", n=2,
                                                       response_format="b64_json")
        assert [base64.b64decode(d.b64_json or "") for d in raw.parse().data] == [
            image_bytes("a robot", i, 2048) for i in range(2)]
        assert Decimal(str(raw.http_response.json()["usage"]["cost"])) == Decimal("0.14")
        refused = httpx.post(harness.url + "/v1/images/generations", headers=auth(env), timeout=20,
                             json={"model": "xai/grok-2-image-1212", "prompt": "x", "size": "1024x1024"})
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "size"
    assert fake_openai[0].requests[0]["body"] == {"model": "grok-2-image-1212", "prompt": "a robot", "n": 2,
                                                  "response_format": "b64_json"}
