"""Errors answered as OpenAI error objects ``{"error": {"message", "type", "param", "code"}}``,
and the mapping from the SDK's exceptions (and pydantic's validation errors) to them."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi.responses import JSONResponse

from ..errors import (
    AdapterHubError,
    IncompatibleAdapterError,
    IntegrityError,
    InvalidNameError,
    InvalidVersionError,
    NotFoundError,
    RegistryError,
    SignaturePolicyError,
)
from ..generation import GenerationError, NonFiniteLogitsError

log = logging.getLogger("adapterhub_sdk.server")


class APIError(Exception):
    """An error answered as ``{"error": {...}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, *, type: str | None = None, param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def error_message(exc: BaseException) -> str:
    """An exception's message on one line, with its hint: what the HTTP error says."""
    msg = " ".join(str(exc.args[0] if exc.args else exc).split())
    hint = getattr(exc, "hint", None)
    return msg + (f"; {hint}" if hint else "")


def api_error(exc: BaseException, *, param: str | None = None) -> APIError:
    """The HTTP error for an exception raised by the SDK (unexpected ones: 500, logged).
    ``param``: the request field to name when the exception names none."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, NotFoundError):
        return APIError(404, error_message(exc), param=param, code="not_found")
    if isinstance(exc, IncompatibleAdapterError):
        reasons = [r for r in exc.reasons if r not in str(exc)]
        text = error_message(exc) + ("" if not reasons else " (" + "; ".join(reasons) + ")")
        return APIError(400, text, param=param, code="incompatible_adapter")
    if isinstance(exc, (InvalidNameError, InvalidVersionError)):
        return APIError(400, error_message(exc), param=param, code="invalid_spec")
    if isinstance(exc, NonFiniteLogitsError):  # the adapter is broken: retrying will not help (not 5xx)
        return APIError(422, error_message(exc), type="model_error", param=param, code=exc.code)
    if isinstance(exc, GenerationError):  # the checks shared with Deployment.generate
        return APIError(400, error_message(exc), param=exc.param or param, code=exc.code)
    if isinstance(exc, SignaturePolicyError):  # refused by the signing policy: not the client's typo
        return APIError(403, error_message(exc), type="permission_error", param=param, code="signature_required")
    if isinstance(exc, (IntegrityError, RegistryError)):
        log.error("registry failure: %s", error_message(exc))
        return APIError(500, error_message(exc), code=type(exc).__name__)
    if isinstance(exc, AdapterHubError) and isinstance(exc, ValueError):
        return APIError(400, error_message(exc), param=param, code="invalid_adapter")
    log.error("internal error", exc_info=exc)
    return APIError(500, f"internal error ({type(exc).__name__}: {exc})", code="internal_error")


def validation_error(errors: Sequence[Any]) -> APIError:
    """One 400 error object for pydantic/FastAPI validation errors (instead of FastAPI's 422)."""
    if not errors:
        return APIError(400, "invalid request", code="invalid_request")
    first = errors[0]
    kind = str(first.get("type", ""))
    if kind == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", "")
        return APIError(400, "malformed JSON in the request body" + (f": {detail}" if detail else ""),
                        code="invalid_json")
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    # a union's branch names (str, list[int], ...) are not part of the field's name
    loc = [p for p in loc if not any(c in p for c in "[]|") and p not in ("str", "int", "float", "bool")]
    param = ".".join(loc) or None
    if kind == "missing":
        return APIError(400, f"missing required parameter: '{param}'", param=param, code="missing_required_parameter")
    msg = str(first.get("msg", "invalid value"))
    return APIError(400, f"'{param}': {msg}" if param else msg, param=param,
                    code="invalid_type" if kind.endswith("_type") or "parsing" in kind else "invalid_value")


def unavailable() -> APIError:
    """The answer to work that arrives or waits while the server shuts down."""
    return APIError(503, "the server is shutting down", code="unavailable")


__all__ = ["APIError", "api_error", "error_message", "unavailable", "validation_error"]
