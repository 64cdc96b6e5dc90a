"""Who may call what: OpenAI-style bearer keys on the API, and adapter updates behind an
explicit opt-in and an admin key of their own.

* ``api_key``: every route but ``/health``, ``/metrics`` and the API's documentation needs
  ``Authorization: Bearer API_KEY`` (or the admin key); otherwise 401.
* adapter updates (``POST``/``DELETE /v1/adapters``, vLLM's ``/v1/load_lora_adapter`` and
  ``/v1/unload_lora_adapter``) are refused (403) unless ``allow_adapter_updates``; then they
  need ``Authorization: Bearer ADMIN_KEY`` (401 without a key or with a wrong one, 403 with
  the API key). Allowing updates without an admin key is refused at start, loopback or not:
  any local process, and any web page a local browser opens, can reach a loopback port.
* ``metrics_auth``: ``/metrics`` needs a key too.

Keys are compared in constant time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from ..errors import AdapterHubError
from .errors import APIError

ADMIN_ROUTES = (("POST", "/v1/adapters"), ("DELETE", "/v1/adapters/"), ("POST", "/v1/load_lora_adapter"),
                ("POST", "/v1/unload_lora_adapter"))
PUBLIC_PATHS = frozenset({"/health", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
SCHEME = "bearer"  # the OpenAPI security scheme's name


class ServerConfigError(AdapterHubError, ValueError):
    """A server configuration that would not be safe (or cannot work): refused at start."""


@dataclass(frozen=True)
class Access:
    """The server's keys and what they open."""

    api_key: str | None = None
    admin_key: str | None = None
    allow_adapter_updates: bool = False
    metrics_auth: bool = False

    def __post_init__(self) -> None:
        for flag, key in (("api_key", self.api_key), ("admin_key", self.admin_key)):
            if key is not None and (not key or key != key.strip() or not key.isprintable()):
                raise ServerConfigError(f"the {flag.replace('_', ' ')} must be non-empty printable text without "
                                        "surrounding spaces")
        if self.allow_adapter_updates and self.admin_key is None:
            raise ServerConfigError("adapter updates over HTTP are allowed but no admin key is set",
                                    hint="set an admin key (admin_key=KEY, --admin-key KEY or ADAPTERHUB_ADMIN_KEY), "
                                         "or leave updates off")
        if self.admin_key is not None and self.api_key is not None and _same(self.admin_key, self.api_key):
            raise ServerConfigError("the admin key is the API key: every client could load adapters",
                                    hint="choose a different admin key")
        if self.metrics_auth and self.api_key is None:
            raise ServerConfigError("metrics auth puts /metrics behind the API key, but no API key is set",
                                    hint="set one (api_key=KEY, --api-key KEY or ADAPTERHUB_API_KEY)")

    def needs_key(self, path: str) -> bool:
        if path == "/metrics":
            return self.metrics_auth
        return self.api_key is not None and path not in PUBLIC_PATHS

    def check(self, method: str, path: str, authorization: str | None) -> APIError | None:
        """The error answering this request, or None when it may go on."""
        key = _bearer(authorization)
        is_admin = key is not None and self.admin_key is not None and _same(key, self.admin_key)
        is_client = key is not None and self.api_key is not None and _same(key, self.api_key)
        if is_admin_route(method, path):
            if self.api_key is not None and not (is_admin or is_client):
                return _unauthorized("this endpoint needs the admin key")
            if not self.allow_adapter_updates:
                return APIError(403, "loading and unloading adapters over HTTP is off on this server; start it "
                                     "with --allow-adapter-updates and --admin-key (ADAPTERHUB_ADMIN_KEY)",
                                type="permission_error", code="adapter_updates_disabled")
            if is_admin:
                return None
            if is_client:
                return APIError(403, "this endpoint needs the admin key, not the API key", type="permission_error",
                                code="admin_key_required")
            return _unauthorized("this endpoint needs the admin key")
        if not self.needs_key(path):
            return None
        if is_admin or is_client:
            return None
        return _unauthorized("this endpoint needs the API key")


def is_admin_route(method: str, path: str) -> bool:
    """Whether ``method path`` loads or unloads adapters (a trailing slash changes nothing)."""
    bare = path.rstrip("/") or "/"
    return any(method == m and (bare == p or (p.endswith("/") and path.startswith(p))) for m, p in ADMIN_ROUTES)


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def _bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    return value if scheme.lower() == "bearer" and value else None


def _unauthorized(what: str) -> APIError:
    return APIError(401, f"missing or invalid API key: {what}; send 'Authorization: Bearer KEY'",
                    code="invalid_api_key")


class AuthMiddleware:
    """Answers 401/403 before a request reaches its route (or is read)."""

    def __init__(self, app: Any, access: Access):
        self.app = app
        self.access = access

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            header = None
            for name, value in scope.get("headers", ()):
                if name == b"authorization":
                    header = value.decode("latin-1")
                    break
            error = self.access.check(scope["method"], scope["path"], header)
            if error is not None:
                response = error.response()
                if error.status == 401:
                    response.headers["WWW-Authenticate"] = "Bearer"
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def document(doc: dict[str, Any], access: Access) -> None:
    """Declare the bearer scheme in an OpenAPI document, and on each operation the key it
    needs and its 401/403 answers."""
    doc.setdefault("components", {}).setdefault("securitySchemes", {})[SCHEME] = {
        "type": "http", "scheme": "bearer",
        "description": "Authorization: Bearer KEY (the API key; the admin key for adapter updates)"}
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            admin = is_admin_route(method.upper(), path.split("{", 1)[0])
            responses = op.setdefault("responses", {})
            if admin:
                responses["403"] = {"description": "adapter updates are off, or the key is not the admin key",
                                    "content": error}
            if admin or access.needs_key(path):
                op["security"] = [{SCHEME: []}]
                responses["401"] = {"description": "no key, or a wrong one", "content": error}


__all__ = ["Access", "AuthMiddleware", "ServerConfigError", "document", "is_admin_route"]
