"""The HTTP the OCI client needs, on the standard library's ``http.client``: persistent
connections per origin, streamed bodies (an iterator of chunks with a Content-Length),
streamed responses, redirects followed for GET and HEAD (credentials never sent to another
origin), TLS verified against the system's trust store, made only when an ``https://``
origin is first contacted; a proxy from the standard environment (``HTTPS_PROXY`` and
the rest, ``NO_PROXY`` honoured). A fresh ``adapterhub push`` or ``pull`` pays a few milliseconds
of imports for this, not httpx's ~0.1 s (and an SSL context's ~0.05 s on a plain-HTTP
registry)."""

from __future__ import annotations

import base64
import functools
import http.client
import json
import os
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

from ..errors import AdapterHubError

CHUNK = 1 << 20  # response bytes per read
REDIRECTS = 5
_REDIRECT = (301, 302, 303, 307, 308)


class TransportError(Exception):
    """The connection failed (refused, reset, timed out, TLS): the caller names the registry."""


class BodyCutError(TransportError):
    """The connection ended before the response's body did (fewer bytes than its Content-Length,
    a chunked body left unfinished, a reset mid-body): a transport failure, never the content's."""

    def __init__(self, origin: str, received: int, expected: int | None, cause: str):
        self.origin, self.received, self.expected, self.cause = origin, received, expected, cause
        of = f" of {expected}" if expected is not None else ""
        if cause in ("TimeoutError", "timeout"):  # the server went quiet; the connection was not closed
            self.detail = f"the connection to {origin} stalled (no data within the timeout) after {received}{of} bytes"
        else:
            self.detail = f"the connection to {origin} closed after {received}{of} bytes"
        super().__init__(f"{cause}: {self.detail}")


@functools.lru_cache(maxsize=1)
def tls_context() -> Any:
    """The system's trust store (where a company's CA is installed, as Docker uses it;
    SSL_CERT_FILE / SSL_CERT_DIR apply), loaded once per process, when first needed."""
    import ssl

    return ssl.create_default_context()


def _proxy_for(scheme: str, netloc: str) -> str | None:
    """The proxy the standard environment names for this origin (``HTTPS_PROXY``,
    ``HTTP_PROXY``, ``ALL_PROXY``, ``NO_PROXY``: as httpx and Docker read them), or None. The
    environment is looked at first, so that without a proxy nothing more is imported."""
    if not any(k.lower() in ("http_proxy", "https_proxy", "all_proxy") and v for k, v in os.environ.items()):
        return None
    import urllib.request

    host = urlsplit(f"//{netloc}").hostname or netloc
    if urllib.request.proxy_bypass(host) or urllib.request.proxy_bypass(netloc):
        return None
    proxies = urllib.request.getproxies()
    proxy = proxies.get(scheme) or proxies.get("all")
    if proxy and "://" not in proxy:
        proxy = "http://" + proxy
    return proxy or None


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
            expected = self._raw.length
            try:
                self._content = self._raw.read()
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                raise self._cut(exc, 0, expected) from exc
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
        expected, got = self._raw.length, 0  # Content-Length (None: chunked, or until the connection closes)
        while True:
            try:
                chunk = self._raw.read(size)
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                raise self._cut(exc, got, expected) from exc
            if not chunk:
                break
            got += len(chunk)
            yield chunk
        self._content = b""
        if self._raw.length:  # http.client ends a body cut short of its Content-Length without a word
            self._drop()
            raise BodyCutError(self.origin, got, expected, "IncompleteRead")
        self._release()

    iter_bytes = iter_raw

    @property
    def origin(self) -> str:
        """``host[:port]`` of the server that answered (a redirect's target, such as a registry's storage)."""
        return self._key[1]

    @property
    def close_delimited(self) -> bool:
        """The body has neither a Content-Length nor chunks: only the connection's end ends it,
        so a body cut short cannot be told from a whole one."""
        return self._raw.length is None and not self._raw.chunked

    def _cut(self, exc: Exception, got: int, expected: int | None) -> BodyCutError:
        """A failure while the body was read (reset, timeout, a chunked body cut short)."""
        if isinstance(exc, http.client.IncompleteRead):
            got += len(exc.partial)
        return BodyCutError(self.origin, got, expected, type(exc).__name__)

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
        if scheme not in ("http", "https"):
            raise TransportError(f"unsupported URL scheme {scheme!r}")
        proxy = _proxy_for(scheme, netloc)
        if proxy is None:
            if scheme == "https":
                return http.client.HTTPSConnection(netloc, timeout=self.timeout, context=tls_context())
            return http.client.HTTPConnection(netloc, timeout=self.timeout)
        p = urlsplit(proxy)
        auth = {}
        if p.username is not None:
            from urllib.parse import unquote

            raw = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
            auth = {"Proxy-Authorization": "Basic " + base64.b64encode(raw).decode()}
        where = p.hostname + (f":{p.port}" if p.port else "") if p.hostname else p.netloc
        if scheme == "https":  # a CONNECT tunnel through the proxy; TLS (verified) to the registry inside it
            conn = http.client.HTTPSConnection(where, timeout=self.timeout, context=tls_context())
            conn.set_tunnel(netloc, headers=auth)
        else:  # plain HTTP: the proxy is sent the absolute URL
            conn = http.client.HTTPConnection(where, timeout=self.timeout)
            conn._adapterhub_proxy = (netloc, auth)  # type: ignore[attr-defined]
        return conn

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
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        replayable = content is None or isinstance(content, bytes)
        for attempt in range(2):
            reused = key in self._idle
            conn = self._connection(*key)
            target, hdrs = path, headers
            via = getattr(conn, "_adapterhub_proxy", None)
            if via is not None:  # an HTTP proxy: the absolute URL, and the proxy's credentials
                target, hdrs = f"http://{via[0]}{path}", {**headers, **via[1]}
            try:
                conn.request(method, target, body=content, headers=hdrs)
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
