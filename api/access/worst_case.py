"""What a request could cost at most: the amount admission holds against a budget or a credit balance.

One number per request, computed before it is queued, from the same output plan the worker sends
(``router.shaping.output_plan``), so the hold always covers the bill (``api/access/limits.py`` holds it,
``common/settlement.py`` settles the real cost and returns the rest). Imports ``router`` only.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from router.shaping import DEFAULT_OUTPUT, output_plan

if TYPE_CHECKING:
    from router.catalog import Catalog
    from common.wire import Route


def worst_case_cost(catalog: "Catalog", plan: Iterable["Route"], prompt_tokens: int,
                    request: Mapping[str, Any], default_output: int = DEFAULT_OUTPUT) -> Decimal:
    """The most this request can cost at any candidate of its plan: what admission reserves.

    Output comes from the same function the worker sends it by (``router.shaping.output_plan``): the
    client's cap clipped to the model's limit, raised above a thinking budget where the provider counts
    thinking inside the cap (Anthropic), times every answer asked for (``n``, ``best_of``); with no cap at
    all, the model's output limit, else ``default_output`` (which the worker then sends as the cap).
    """
    worst = Decimal(0)
    for route in plan:
        model = catalog.get(route.model)
        if model is None or model.free:
            continue
        shape = catalog.shape(model)
        output = output_plan(shape, request, prompt_tokens,
                             None if model.max_output_tokens else default_output)
        tokens = output.worst_output(model.max_output_tokens or default_output)
        worst = max(worst, catalog.cost(model, {"prompt_tokens": prompt_tokens, "completion_tokens": tokens}))
    return worst


# A transcription's worst case comes from its upload's size, before the audio is decoded (the gateway never
# decodes it): the longest the file can play at the lowest bitrate a supported format encodes speech at.
# 6 kbit/s is Opus's floor (ogg/webm); MP3's is 8 kbit/s, AAC/m4a's and FLAC/WAV's are far above, so a real
# file plays no longer than its bytes at 750 per second. Token-priced transcription models count input
# audio at no more than 32 tokens a second (Gemini's documented rate; OpenAI's gpt-4o-transcribe counts
# fewer), and their output at the model's output limit.
AUDIO_BYTES_PER_SECOND_FLOOR = 750
AUDIO_TOKENS_PER_SECOND = 32


def worst_case_transcription_cost(catalog: "Catalog", plan: Iterable["Route"], audio_bytes: int,
                                  default_output: int = DEFAULT_OUTPUT) -> Decimal:
    """The most a transcription of ``audio_bytes`` of audio can cost at any candidate of its plan: priced by
    the hour (``Model.audio_hour_price``) or by tokens, whichever is dearer for the candidate."""
    seconds = math.ceil(max(0, audio_bytes) / AUDIO_BYTES_PER_SECOND_FLOOR)
    worst = Decimal(0)
    for route in plan:
        model = catalog.get(route.model)
        if model is None or model.free:
            continue
        by_time = catalog.audio_cost(model, seconds)
        by_tokens = catalog.cost(model, {"prompt_tokens": seconds * AUDIO_TOKENS_PER_SECOND,
                                         "completion_tokens": model.max_output_tokens or default_output})
        worst = max(worst, by_time, by_tokens)
    return worst
