"""The HTTP the OCI client needs, on the standard library's ``http.client``: persistent
connections per origin, streamed bodies (an iterator of chunks with a Content-Length),
streamed responses, redirects followed for GET and HEAD (credentials never sent to another
origin), TLS verified against the system's trust store, made only when an ``https://``
origin is first contacted. A fresh ``adapterhub push`` or ``pull`` pays a few milliseconds
of imports for this, not httpx's ~0.1 s (and an SSL context's ~0.05 s on a plain-HTTP
registry)."""

from __future__ import annotations

import base64
import functools
import http.client
import json
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

from ..errors import AdapterHubError

CHUNK = 1 << 20  # response bytes per read
REDIRECTS = 5
_REDIRECT = (301, 302, 303, 307, 308)


class TransportError(Exception):
    """The connection failed (refused, reset, timed out, TLS): the caller names the registry."""


@functools.lru_cache(maxsize=1)
def tls_context() -> Any:
    """The system's trust store (where a company's CA is installed, as Docker uses it;
    SSL_CERT_FILE / SSL_CERT_DIR apply), loaded once per process, when first needed."""
    import ssl

    return ssl.create_default_context()


class Response:
    """A response: status, headers (case-insensitive ``get``), the body read whole (``content``,
    ``json()``, ``text``) or streamed (``iter_raw``, then ``close``)."""

    def __init__(self, raw: http.client.HTTPResponse, conn: http.client.HTTPConnection, pool: Client,
                 key: tuple[str, str]):
        self._raw, self._conn, self._pool, self._key = raw, conn, pool, key
        self.status_code = raw.status
        self.headers = raw.headers
        self._content: bytes | None = None

    def read(self) -> bytes:
        if self._content is None:
            try:
                self._content = self._raw.read()
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                raise TransportError(f"{type(exc).__name__}: {exc}") from exc
            self._release()
        return self._content

    @property
    def content(self) -> bytes:
        return self.read()

    @property
    def text(self) -> str:
        return self.read().decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.read())

    def iter_raw(self, size: int = CHUNK) -> Iterator[bytes]:
        if self._content is not None:
            yield self._content
            return
        while True:
            try:
                chunk = self._raw.read(size)
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                raise TransportError(f"{type(exc).__name__}: {exc}") from exc
            if not chunk:
                break
            yield chunk
        self._content = b""
        self._release()

    iter_bytes = iter_raw

    def close(self) -> None:
        if self._content is None:  # not read to its end: the connection cannot be reused
            self._content = b""
            self._drop()

    def _release(self) -> None:
        if self._raw.will_close:
            self._drop()
        elif self._pool._idle.setdefault(self._key, self._conn) is not self._conn:
            self._conn.close()  # one kept per origin

    def _drop(self) -> None:
        self._raw.close()
        self._conn.close()


class Client:
    """A few persistent connections (one per origin), as ``httpx.Client`` keeps them."""

    def __init__(self, timeout: float = 60.0):
        self.timeout = timeout
        self._idle: dict[tuple[str, str], http.client.HTTPConnection] = {}

    def close(self) -> None:
        for conn in self._idle.values():
            conn.close()
        self._idle.clear()

    def _connection(self, scheme: str, netloc: str) -> http.client.HTTPConnection:
        conn = self._idle.pop((scheme, netloc), None)
        if conn is not None:
            return conn
        if scheme == "https":
            return http.client.HTTPSConnection(netloc, timeout=self.timeout, context=tls_context())
        if scheme == "http":
            return http.client.HTTPConnection(netloc, timeout=self.timeout)
        raise TransportError(f"unsupported URL scheme {scheme!r}")

    def send(self, method: str, url: str, *, headers: dict[str, str] | None = None,
             content: bytes | Iterable[bytes] | None = None, params: dict[str, Any] | None = None,
             auth: tuple[str, str] | None = None, stream: bool = False) -> Response:
        """One request; redirects followed for GET and HEAD (an Authorization header only to
        the origin it was meant for). Not streamed: the body is read before returning."""
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params, doseq=True)
        hdrs = dict(headers or {})
        if auth is not None:
            hdrs["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        origin = urlsplit(url)[:2]
        for _ in range(REDIRECTS + 1):
            resp = self._once(method, url, hdrs, content)
            if resp.status_code not in _REDIRECT or method not in ("GET", "HEAD") or not resp.headers.get("location"):
                break
            resp.read()
            url = urljoin(url, resp.headers["location"])
            if urlsplit(url)[:2] != origin:
                hdrs = {k: v for k, v in hdrs.items() if k.lower() != "authorization"}
        if not stream:
            resp.read()
        return resp

    def _once(self, method: str, url: str, headers: dict[str, str], content: Any) -> Response:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        replayable = content is None or isinstance(content, bytes)
        for attempt in range(2):
            reused = key in self._idle
            conn = self._connection(*key)
            try:
                conn.request(method, target, body=content, headers=headers)
                raw = conn.getresponse()
            except AdapterHubError:  # the body's own check failed (the local bytes do not hash right)
                conn.close()
                raise
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                # a kept-alive connection the server closed meanwhile: once more on a new one
                if reused and replayable and attempt == 0:
                    continue
                raise TransportError(f"{type(exc).__name__}: {exc}") from exc
            return Response(raw, conn, self, key)
        raise TransportError("no connection")  # pragma: no cover - the loop returns or raises
