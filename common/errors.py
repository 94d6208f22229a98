"""The error catalogue: every refusal the gateway makes, in one documented envelope.

The body is OpenAI-compatible (the SDKs read ``error.message``/``error.code``/``error.type``) and carries
the product's machine-readable ``error_type`` at the top level as well:

    {"error": {"code": "PAID_MODEL_AUTH_REQUIRED", "message": "...", "type": "paid_model_auth_required",
               "param": null},
     "error_type": "paid_model_auth_required"}
"""

from __future__ import annotations

import msgspec

# error_type -> HTTP status. The README's error table is generated from the same facts.
STATUS_BY_TYPE: dict[str, int] = {
    "invalid_request": 400,
    "missing_client_ip": 400,
    "authentication_required": 401,
    "paid_model_auth_required": 401,
    "promotion_limit_reached": 401,
    "budget_exceeded": 402,
    "insufficient_credits": 402,
    "permission_denied": 403,
    "model_not_found": 404,
    "not_found": 404,
    "no_endpoints_found": 404,
    "method_not_allowed": 405,
    "client_too_slow": 408,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "rate_limit_exceeded": 429,
    "internal_error": 500,
    "upstream_error": 502,
    "temporarily_unavailable": 503,
    "upstream_timeout": 504,
}


class ErrorBody(msgspec.Struct, omit_defaults=False):
    code: str
    message: str
    type: str
    param: str | None = None


class ErrorEnvelope(msgspec.Struct):
    error: ErrorBody
    error_type: str


class GatewayError(Exception):
    """An error that becomes a response in the documented envelope.

    ``retry_after`` (seconds) becomes a ``Retry-After`` header where it is set.
    """

    def __init__(
        self,
        error_type: str,
        message: str,
        *,
        status: int | None = None,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.status = status or STATUS_BY_TYPE.get(error_type, 500)
        self.param = param
        self.code = code or error_type.upper()
        self.retry_after = retry_after
        self.headers = dict(headers or {})

    def envelope(self) -> ErrorEnvelope:
        return ErrorEnvelope(
            error=ErrorBody(code=self.code, message=self.message, type=self.error_type, param=self.param),
            error_type=self.error_type,
        )

    def body(self) -> bytes:
        return msgspec.json.encode(self.envelope())

    def response_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.retry_after is not None:
            headers["retry-after"] = str(max(1, int(self.retry_after + 0.999)))
        return headers

    def __repr__(self) -> str:
        return f"GatewayError({self.error_type!r}, {self.message!r}, status={self.status})"


def unavailable(message: str, retry_after: float = 1.0) -> GatewayError:
    return GatewayError("temporarily_unavailable", message, retry_after=retry_after)


def invalid(message: str, param: str | None = None) -> GatewayError:
    return GatewayError("invalid_request", message, param=param)
