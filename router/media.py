"""What image and speech models take and what they cost per image or character: data, read in one place.

The price feeds list image models priced per token (``gpt-image-1``: its text input and image output
tokens) and miss those priced per image (``dall-e-3``); both are described here by family: the sizes,
qualities and ``n`` a model accepts, whether it can answer with a URL, and its price per image by quality
and size (OpenAI's list prices). The web tier refuses what a model does not take before any upstream
call, and reserves ``n`` images at the dearest price the request can reach; the worker bills per token
where the upstream reports tokens and the catalog has token prices, else per image.

A family the table does not know (another provider's image model) is taken as OpenAI's images API takes
a model in general (``GENERIC``): any size, ``n`` up to 10, priced per token or at its configured price.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal

from router.model import Model

SQUARE, WIDE, TALL = "1024x1024", "1792x1024", "1024x1792"
LANDSCAPE, PORTRAIT = "1536x1024", "1024x1536"


@dataclass(frozen=True)
class ImageSpec:
    sizes: tuple[str, ...] = ()  # () = any size the upstream takes
    qualities: tuple[str, ...] = ()  # () = any
    max_n: int = 10
    response_formats: tuple[str, ...] = ("url", "b64_json")  # () = the upstream answers b64_json only
    styles: tuple[str, ...] = ()  # dall-e-3's ``style``; () = the parameter is refused
    gpt_image_options: bool = False  # background, output_format, output_compression, moderation
    # USD per image by (quality, size): the bill where no tokens are reported, and the reservation.
    per_image: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    default_quality: str = ""
    default_size: str = ""
    # Priced per token: the most image output tokens one image may be billed (gpt-image: 6240 at high
    # quality, 1536x1024), so a reservation holds enough where no per-image price is listed.
    output_tokens_per_image: int = 0
    # /images/edits: how many input images it takes (0: no edits), and the most bytes of each
    edit_images: int = 0
    edit_image_bytes: int = 50 * 1024 * 1024

    def price(self, quality: str | None, size: str | None) -> Decimal | None:
        """USD for one image of ``quality`` and ``size`` (the defaults where absent), None when not priced;
        ``auto`` (or a value without a price) counts at the dearest price it could be."""
        if not self.per_image:
            return None
        quality = quality or self.default_quality
        size = size or self.default_size
        found = [p for (q, s), p in self.per_image.items()
                 if (q == quality or quality not in self.qualities or quality == "auto")
                 and (s == size or size not in self.sizes or size == "auto")]
        return max(found) if found else max(self.per_image.values())


def _table(prices: dict[str, tuple[str, str, str]], sizes: tuple[str, str, str]) -> dict[tuple[str, str], Decimal]:
    return {(quality, size): Decimal(price) for quality, row in prices.items() for size, price in zip(sizes, row)}


GPT_IMAGE_SIZES = (SQUARE, LANDSCAPE, PORTRAIT)

IMAGE_SPECS: dict[str, ImageSpec] = {
    "dall-e-2": ImageSpec(
        sizes=("256x256", "512x512", SQUARE), qualities=("standard",), max_n=10, default_quality="standard",
        edit_images=1, edit_image_bytes=4 * 1024 * 1024,
        default_size=SQUARE, per_image=_table({"standard": ("0.016", "0.018", "0.02")},
                                              ("256x256", "512x512", SQUARE))),
    "dall-e-3": ImageSpec(
        sizes=(SQUARE, WIDE, TALL), qualities=("standard", "hd"), max_n=1, styles=("vivid", "natural"),
        default_quality="standard", default_size=SQUARE,
        per_image=_table({"standard": ("0.04", "0.08", "0.08"), "hd": ("0.08", "0.12", "0.12")},
                         (SQUARE, WIDE, TALL))),
    # xAI: n and response_format only (no size, quality or style), $0.07 an image
    "grok-2-image": ImageSpec(qualities=("auto",), sizes=("auto",), max_n=10,
                              per_image={("auto", "auto"): Decimal("0.07")}, default_quality="auto",
                              default_size="auto"),
    "gpt-image-1": ImageSpec(
        sizes=(*GPT_IMAGE_SIZES, "auto"), qualities=("low", "medium", "high", "auto"), response_formats=(),
        gpt_image_options=True, default_quality="auto", default_size="auto", output_tokens_per_image=6240,
        edit_images=16,
        per_image=_table({"low": ("0.011", "0.016", "0.016"), "medium": ("0.042", "0.063", "0.063"),
                          "high": ("0.167", "0.25", "0.25")}, GPT_IMAGE_SIZES)),
    "gpt-image-1-mini": ImageSpec(
        sizes=(*GPT_IMAGE_SIZES, "auto"), qualities=("low", "medium", "high", "auto"), response_formats=(),
        gpt_image_options=True, default_quality="auto", default_size="auto", output_tokens_per_image=6240,
        edit_images=16,
        per_image=_table({"low": ("0.005", "0.006", "0.006"), "medium": ("0.011", "0.015", "0.015"),
                          "high": ("0.036", "0.052", "0.052")}, GPT_IMAGE_SIZES)),
}
GPT_IMAGE = ImageSpec(  # a newer gpt-image model than the table knows: priced per token, same options
    sizes=(*GPT_IMAGE_SIZES, "auto"), qualities=("low", "medium", "high", "auto"), response_formats=(),
    gpt_image_options=True, default_quality="auto", default_size="auto", output_tokens_per_image=6240,
    edit_images=16)
# Gemini's image models (generateContent with image output): one image a request, any of OpenAI's sizes
# as the nearest aspect ratio (GEMINI_ASPECT), b64_json only; priced per token (at most 2,000 image
# output tokens an image, at 4K).
GEMINI_IMAGE = ImageSpec(sizes=(SQUARE, LANDSCAPE, PORTRAIT, WIDE, TALL, "auto"), qualities=("auto",), max_n=1,
                         response_formats=(), default_quality="auto", default_size="auto",
                         output_tokens_per_image=2000)
GEMINI_ASPECT = {SQUARE: "1:1", LANDSCAPE: "3:2", PORTRAIT: "2:3", WIDE: "16:9", TALL: "9:16"}
GENERIC = ImageSpec()


def image_spec(model: Model) -> ImageSpec:
    """The spec of ``model``'s family: its upstream id, without a dated suffix."""
    upstream = model.upstream_id.rsplit("/", 1)[-1].lower()
    for family in sorted(IMAGE_SPECS, key=len, reverse=True):
        if re.fullmatch(re.escape(family) + r"(-\d[\d-]*)?", upstream):  # a dated snapshot is its family
            return IMAGE_SPECS[family]
    if upstream.startswith("gemini") and "-image" in upstream:
        return GEMINI_IMAGE
    return GPT_IMAGE if upstream.startswith(("gpt-image", "chatgpt-image")) else GENERIC


# Models the price feeds do not list or price (per image, per character), as the registry's own listings.
LISTED: tuple[Model, ...] = (
    Model(id="openai/dall-e-3", name="DALL·E 3", provider="openai", upstream_id="dall-e-3", modality="image",
          pricing_source="registry", auto=False, input_modalities=("text",), output_modalities=("image",)),
    Model(id="xai/grok-2-image-1212", name="Grok 2 Image", provider="xai", upstream_id="grok-2-image-1212",
          modality="image", pricing_source="registry", auto=False, input_modalities=("text",),
          output_modalities=("image",)),
    Model(id="openai/dall-e-2", name="DALL·E 2", provider="openai", upstream_id="dall-e-2", modality="image",
          pricing_source="registry", auto=False, input_modalities=("text",), output_modalities=("image",),
          deprecated=True),
)


# --- speech ---------------------------------------------------------------------------------------------

OPENAI_VOICES = ("alloy", "ash", "coral", "echo", "fable", "onyx", "nova", "sage", "shimmer")
SPEECH_FORMATS = {"mp3": "audio/mpeg", "opus": "audio/opus", "aac": "audio/aac", "flac": "audio/flac",
                  "wav": "audio/wav", "pcm": "audio/pcm"}


@dataclass(frozen=True)
class SpeechSpec:
    voices: tuple[str, ...] = ()  # () = any voice the upstream knows
    instructions: bool = False  # takes ``instructions`` (how to speak)
    max_characters: int = 4096
    per_character: Decimal = Decimal(0)  # USD per input character


SPEECH_SPECS: dict[str, SpeechSpec] = {
    "tts-1": SpeechSpec(voices=OPENAI_VOICES, per_character=Decimal("0.000015")),
    "tts-1-hd": SpeechSpec(voices=OPENAI_VOICES, per_character=Decimal("0.00003")),
    # Priced per token ($0.60/M text in, $12/M audio out), but the speech API reports no usage: billed at
    # OpenAI's own estimate of $0.015 a minute, about a thousand characters of speech.
    "gpt-4o-mini-tts": SpeechSpec(voices=(*OPENAI_VOICES, "ballad", "verse", "marin", "cedar"), instructions=True,
                                  per_character=Decimal("0.000015")),
}


def speech_spec(model: Model) -> SpeechSpec:
    upstream = model.upstream_id.rsplit("/", 1)[-1].lower()
    for family in sorted(SPEECH_SPECS, key=len, reverse=True):
        if upstream == family or upstream.startswith(family + "-20"):
            return SPEECH_SPECS[family]
    return SpeechSpec()


def _speech(upstream: str, name: str) -> Model:
    return Model(id=f"openai/{upstream}", name=name, provider="openai", upstream_id=upstream, modality="speech",
                 pricing_source="registry", auto=False, input_modalities=("text",), output_modalities=("audio",))


LISTED += (_speech("tts-1", "TTS 1"), _speech("tts-1-hd", "TTS 1 HD"), _speech("gpt-4o-mini-tts", "GPT-4o mini TTS"))


# --- moderation ------------------------------------------------------------------------------------------


def _moderation(upstream: str, name: str, images: bool, deprecated: bool = False) -> Model:
    """OpenAI's moderation models are free (no price to list: ``free``, tier ``free``)."""
    inputs = ("text", "image") if images else ("text",)
    return Model(id=f"openai/{upstream}", name=name, provider="openai", upstream_id=upstream,
                 modality="moderation", free=True, tier="free", pricing_source="registry", auto=False,
                 deprecated=deprecated, input_modalities=inputs, output_modalities=("text",))


LISTED += (
    _moderation("omni-moderation-latest", "Omni Moderation", images=True),
    _moderation("omni-moderation-2024-09-26", "Omni Moderation (2024-09-26)", images=True),
    _moderation("text-moderation-latest", "Text Moderation", images=False, deprecated=True),
)


# --- rerank ---------------------------------------------------------------------------------------------

SEARCH_UNIT_DOCUMENTS = 100  # Cohere: one search unit is a query with up to 100 documents


@dataclass(frozen=True)
class RerankSpec:
    max_documents: int = 1000
    per_search_unit: Decimal | None = None  # USD per search unit (Cohere); None: priced per token


RERANK_SPECS: dict[str, RerankSpec] = {
    "rerank-v3.5": RerankSpec(per_search_unit=Decimal("0.002")),  # $2.00 per 1,000 searches
    "rerank-english-v3.0": RerankSpec(per_search_unit=Decimal("0.002")),
    "rerank-multilingual-v3.0": RerankSpec(per_search_unit=Decimal("0.002")),
}


def rerank_spec(model: Model) -> RerankSpec:
    return RERANK_SPECS.get(model.upstream_id.rsplit("/", 1)[-1].lower(), RerankSpec())


def search_units(documents: int) -> int:
    return max(1, -(-documents // SEARCH_UNIT_DOCUMENTS))


def _rerank(provider: str, upstream: str, name: str, per_token: str = "0") -> Model:
    return Model(id=f"{provider}/{upstream}", name=name, provider=provider, upstream_id=upstream,
                 modality="rerank", prompt_price=per_token, pricing_source="registry", auto=False,
                 input_modalities=("text",), output_modalities=("text",))


LISTED += (
    _rerank("cohere", "rerank-v3.5", "Cohere Rerank 3.5"),
    _rerank("cohere", "rerank-english-v3.0", "Cohere Rerank English 3.0"),
    _rerank("cohere", "rerank-multilingual-v3.0", "Cohere Rerank Multilingual 3.0"),
    # USD per token, from the vendors' price pages
    _rerank("jina", "jina-reranker-v2-base-multilingual", "Jina Reranker v2", "0.00000002"),
    _rerank("jina", "jina-reranker-m0", "Jina Reranker m0", "0.00000002"),
    _rerank("voyage", "rerank-2.5", "Voyage Rerank 2.5", "0.00000005"),
    _rerank("voyage", "rerank-2.5-lite", "Voyage Rerank 2.5 lite", "0.00000002"),
)
