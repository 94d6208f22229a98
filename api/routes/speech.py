"""``POST /audio/speech``: text to audio, streamed to the client as the upstream produces it.

The voices a model has, whether it takes ``instructions``, how much text it reads and its price per
character are ``router/media.py``'s data: anything else is a 400 naming the field before any upstream
call. Admission reserves the input's characters at that price. The audio is binary all the way: the
worker publishes the upstream's bytes as they arrive, in events of at most 256 KiB, and this route writes
them out under the format's content type (``api/formats/raw_body.py``), so
``with_streaming_response`` reads the first bytes before the last are made.
"""

from __future__ import annotations

from decimal import Decimal

from starlette.requests import Request
from starlette.responses import Response

from api.exchange.answer import JSON_KEEPALIVE_AFTER
from api.exchange.body import read_json
from api.exchange.dispatch import Dispatch
from api.formats.raw_body import RawBody
from api.gateway import Gateway
from api.routes.embeddings import endpoint_plan
from common.errors import GatewayError, invalid
from common.wire import Route, SpeechRequest
from router.catalog import Catalog
from router.media import SPEECH_FORMATS, SpeechSpec, speech_spec

# Audio: nothing may be written before the first real byte, so the status line waits as a JSON answer's
# does; past that, headers go out with no filler and a failure cuts the connection.
FORMATS = {name: RawBody(media_type, commit_wait=JSON_KEEPALIVE_AFTER) for name, media_type in SPEECH_FORMATS.items()}


async def create_speech(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    dispatch = Dispatch(gateway, request, "speech", FORMATS["mp3"])
    try:
        await dispatch.identify()  # who calls, before the body is read or planned
        body, speech = await read_json(request, SpeechRequest, gateway.settings.limits.max_body_bytes)
        dispatch.exchange.model = speech.model
        dispatch.format = FORMATS[speech.response_format]
        plan = endpoint_plan(gateway, speech.model, modality="speech", capability="speech")
        model = gateway.catalog.get(plan[0].model) or gateway.catalog.resolve(speech.model)
        check_request(speech, speech_spec(model), model.id)
        await dispatch.admit(plan, request={"max_tokens": 1}, extra_cost=worst_case(gateway.catalog, plan, speech))
    except GatewayError as error:
        return await dispatch.refuse(error)
    return await dispatch.answer(dispatch.job("speech", plan, body=body, stream=True))


def check_request(speech: SpeechRequest, spec: SpeechSpec, model_id: str) -> None:
    if len(speech.input) > spec.max_characters:
        raise invalid(f"'input' has {len(speech.input)} characters; {model_id} reads at most "
                      f"{spec.max_characters}.", param="input")
    if spec.voices and speech.voice not in spec.voices:
        raise invalid(f"{model_id} has no voice {speech.voice!r}; its voices: {', '.join(spec.voices)}.",
                      param="voice")
    if speech.instructions is not None and not spec.instructions:
        raise invalid(f"{model_id} does not take 'instructions'.", param="instructions")
    if speech.stream_format == "sse":
        raise invalid("This gateway streams speech as audio bytes: leave 'stream_format' out or send 'audio'.",
                      param="stream_format")


def worst_case(catalog: Catalog, plan: list[Route], speech: SpeechRequest) -> Decimal:
    """The input's characters at the dearest candidate's price per character."""
    worst = Decimal(0)
    for route in plan:
        model = catalog.get(route.model)
        if model is not None and not model.free:
            worst = max(worst, speech_spec(model).per_character * len(speech.input))
    return worst


ROUTES = [("POST", "/audio/speech", create_speech)]
