"""A small client of the OCI distribution HTTP API (``/v2/``), over the standard library's
``http.client`` (:mod:`.http`)

What :mod:`.remote` needs and no more: blobs (HEAD to skip what is there, monolithic or
chunked upload finished by ``PUT ?digest=``, streamed download verified against its
digest), manifests (PUT and GET of the OCI image manifest, the digest checked against the
bytes) and tag lists (paginated with ``Link``). Authentication is the registry's: a
``401`` names a ``Bearer`` token service (asked for a token with the user's credentials,
if any) or ``Basic``; credentials come from the Docker configuration
(``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``: ``auths``, ``credHelpers``,
``credsStore`` through ``docker-credential-NAME get``). Plain HTTP only when asked
(``insecure``)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from ..errors import AdapterHubError, IntegrityError, NotFoundError
from .http import BodyCutError, Client, TransportError, tls_context

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CHUNK = 1 << 20  # read/write granularity
CHUNKED_ABOVE = 64 << 20  # blobs larger than this are uploaded in PATCH chunks of this size
MANIFEST_LIMIT = 4 << 20
TAGS_PAGE = 1000  # tags asked for per page (the registry may send fewer, and a Link to the next)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}", re.ASCII)
_LINK_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
_CHALLENGE_PARAM = re.compile(r'([A-Za-z_]+)="([^"]*)"')
LOGIN_HINT = ("log in with 'docker login {host}' (or put credentials for {host} in ~/.docker/config.json; "
              "DOCKER_CONFIG names another directory)")


class OciUnavailableError(AdapterHubError, ConnectionError):
    """The registry cannot be reached, or did not answer as an OCI registry."""

    hint = "check the host and port"


class OciAuthError(AdapterHubError, PermissionError):
    """The registry wants credentials, or refused the ones given."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------- credentials


def docker_config_path() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"


def _auth_host(key: str) -> str:
    """``https://host:5000/v1/`` and ``host:5000`` name the same registry."""
    key = re.sub(r"^[a-z]+://", "", key.strip().lower())
    return key.split("/", 1)[0]


#: why the Docker configuration gave no credentials for a host although it names some (a
#: helper that failed, an entry of a kind not supported): said when that host asks for them
CREDENTIAL_PROBLEMS: dict[str, str] = {}


def _helper(name: str, host: str) -> tuple[str, str] | None:
    def problem(why: str) -> None:
        CREDENTIAL_PROBLEMS[host.lower()] = f"the credential helper docker-credential-{name} {why}"

    if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
        problem("has a name that is not a program name")
        return None
    try:
        out = subprocess.run([f"docker-credential-{name}", "get"], input=host.encode(), capture_output=True,
                             timeout=30, check=False)
    except OSError as exc:
        problem(f"could not be run ({exc.strerror or exc})")
        return None
    except subprocess.TimeoutExpired:
        problem("did not answer within 30 s")
        return None
    if out.returncode != 0:
        said = " ".join(out.stderr.decode("utf-8", "replace").split() or out.stdout.decode("utf-8", "replace").split())
        problem(f"failed (exit {out.returncode}{': ' + said[:120] if said else ''})")
        return None
    try:
        got = json.loads(out.stdout)
        return str(got["Username"]), str(got["Secret"])
    except (ValueError, KeyError, TypeError):
        problem("answered something other than its JSON (Username, Secret)")
        return None


def docker_credentials(host: str) -> tuple[str, str] | None:
    """(user, password) for ``host`` from the Docker configuration, or None."""
    CREDENTIAL_PROBLEMS.pop(host.lower(), None)
    path = docker_config_path()
    try:
        cfg = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(cfg, dict):
        return None
    want = host.lower()
    helpers = cfg.get("credHelpers") or {}
    if isinstance(helpers, dict):
        for key, name in helpers.items():
            if _auth_host(key) == want and isinstance(name, str):
                return _helper(name, host)
    auths = cfg.get("auths") or {}
    if isinstance(auths, dict):
        for key, entry in auths.items():
            if _auth_host(key) != want or not isinstance(entry, dict):
                continue
            if entry.get("auth"):
                try:
                    user, _, pw = base64.b64decode(entry["auth"]).decode("utf-8").partition(":")
                    return user, pw
                except (ValueError, UnicodeDecodeError):
                    return None
            if entry.get("username") and entry.get("password"):
                return str(entry["username"]), str(entry["password"])
            if entry.get("identitytoken"):
                CREDENTIAL_PROBLEMS[want] = (f"the entry for {key} in {path} holds an identitytoken (an OAuth refresh "
                                             "token), which adapterhub does not use; log in with a user and password "
                                             "or token ('docker login')")
    store = cfg.get("credsStore")
    if isinstance(store, str) and store:
        return _helper(store, host)
    return None


# ---------------------------------------------------------------------------- the client


_tls_context = tls_context  # the system's trust store; also with ``insecure``, for HTTPS storage redirects


class OciClient:
    """One registry (``host[:port]``), one repository at a time per call."""

    def __init__(self, host: str, *, insecure: bool = False, timeout: float = 60.0):
        self.host = host
        self.base = f"{'http' if insecure else 'https'}://{host}"
        self.insecure = insecure
        self._creds = docker_credentials(host)
        self._tokens: dict[str, str] = {}  # scope -> bearer token
        self._basic = False
        self.http = Client(timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> OciClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ transport

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except BodyCutError as exc:
            raise OciUnavailableError(f"{what}: {exc.detail} ({exc.cause})", hint="nothing was recorded; retry") \
                from exc
        except TransportError as exc:
            name = str(exc).split(":", 1)[0]
            tls = "SSL" in str(exc) or "ssl" in str(exc)
            raise OciUnavailableError(
                f"{what}: the registry at {self.host} is not reachable ({name}"
                + (": TLS failed, is it a plain-HTTP registry?" if tls and not self.insecure else "") + ")",
                hint="check the host and port" + ("" if self.insecure else
                                                  "; a plain-HTTP registry (one on loopback) needs --insecure "
                                                  f"(in Python: ADAPTERHUB_OCI_INSECURE={self.host})"),
            ) from exc

    def _auth_headers(self, scope: str) -> dict[str, str]:
        if scope in self._tokens:
            return {"Authorization": f"Bearer {self._tokens[scope]}"}
        if self._basic and self._creds:
            raw = f"{self._creds[0]}:{self._creds[1]}".encode()
            return {"Authorization": "Basic " + base64.b64encode(raw).decode()}
        return {}

    def _answer_challenge(self, resp: Any, scope: str, what: str) -> None:
        """Act on a 401's ``WWW-Authenticate``; raise when there is nothing more to try."""
        header = resp.headers.get("www-authenticate", "")
        kind = header.split(" ", 1)[0].lower()
        hint = LOGIN_HINT.format(host=self.host)
        if kind == "basic" and self._creds and not self._basic:
            self._basic = True
            return
        if kind == "bearer" and scope not in self._tokens:
            params = dict(_CHALLENGE_PARAM.findall(header))
            realm = params.pop("realm", None)
            if realm and not realm.startswith("https://") and not self.insecure:
                raise OciAuthError(f"{what}: {self.host} names a token service over plain HTTP ({realm}); "
                                   "credentials are not sent there", hint="use --insecure only for a registry you trust")
            if realm:
                # what this operation needs (pull,push for a push), and what the registry named
                asked = params.pop("scope", None)
                query: dict[str, Any] = {**params, "scope": [scope] + ([asked] if asked and asked != scope else [])}
                auth = self._creds
                with self._errors(what):
                    tok = self.http.send("GET", realm, params=query, auth=auth)
                if tok.status_code == 200:
                    body = tok.json()
                    token = body.get("token") or body.get("access_token")
                    if token:
                        self._tokens[scope] = token
                        return
                if tok.status_code in (401, 403) and auth:
                    raise OciAuthError(f"{what}: the registry's token service refused the credentials for "
                                       f"{self.host}", hint=hint)
        if self._creds:
            raise OciAuthError(f"{what}: {self.host} refused the credentials from {docker_config_path()} (401)",
                               hint=hint)
        why = CREDENTIAL_PROBLEMS.get(self.host.lower())
        if why:
            raise OciAuthError(f"{what}: {self.host} requires credentials (401), and {why}", hint=hint)
        raise OciAuthError(f"{what}: {self.host} requires credentials and none are configured (401)", hint=hint)

    def request(self, method: str, url: str, *, scope: str, what: str, ok: tuple[int, ...] = (200,),
                stream: bool = False, **kw: Any) -> Any:
        """One request, authenticating as the registry asks (and retrying once per step)."""
        if url.startswith("/"):
            url = self.base + url
        for _ in range(3):
            # credentials go to this registry only, never to a host its answers name
            same = url == self.base or url.startswith(self.base + "/")
            headers = {"User-Agent": "adapterhub", **kw.pop("headers", {}),
                       **(self._auth_headers(scope) if same else {})}
            kw["headers"] = headers
            with self._errors(what):
                resp = self.http.send(method, url, stream=stream, **kw)
            if resp.status_code != 401:
                break
            if stream:
                resp.close()
            if callable(kw.get("content")) or hasattr(kw.get("content"), "__next__"):
                raise OciAuthError(f"{what}: {self.host} asked for credentials in the middle of an upload",
                                   hint=LOGIN_HINT.format(host=self.host))
            self._answer_challenge(resp, scope, what)
        if resp.status_code in ok:
            return resp
        if stream:
            with self._errors(what):
                resp.read()
        self._raise(resp, what)

    def _raise(self, resp: Any, what: str) -> NoReturn:
        code = resp.status_code
        detail = ""
        try:
            errs = resp.json().get("errors") or []
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errs if isinstance(e, dict))
        except Exception:
            detail = resp.text[:200].strip()
        detail = " ".join(detail.split())
        if code == 401:
            raise OciAuthError(f"{what}: {self.host} requires credentials (401)",
                               hint=LOGIN_HINT.format(host=self.host))
        if code == 403:
            raise OciAuthError(f"{what}: {self.host} denied access (403{': ' + detail if detail else ''})",
                               hint="check that your account may read (pull) or write (push) this repository")
        if code == 404:
            raise NotFoundError(f"{what}: not found on {self.host} (404{': ' + detail if detail else ''})")
        if code >= 500:
            raise OciUnavailableError(f"{what}: the registry at {self.host} answered {code}",
                                      hint="the registry failed on its side; retry, or see its logs")
        raise AdapterHubError(f"{what}: the registry refused the request ({code}{': ' + detail if detail else ''})")

    def api_status(self) -> int | None:
        """The status of ``GET /v2/``, the distribution API's base (a registry answers 200, or
        401 asking for credentials); None when nothing answers."""
        try:
            resp = self.http.send("GET", self.base + "/v2/", headers={"User-Agent": "adapterhub"})
        except Exception:
            return None
        return int(resp.status_code)

    @staticmethod
    def _scope(repo: str, push: bool = False) -> str:
        return f"repository:{repo}:{'pull,push' if push else 'pull'}"

    # ------------------------------------------------------------------ tags

    def tags(self, repo: str) -> list[str]:
        """Every tag of ``repo`` (following ``Link`` pages); empty if the repository is unknown."""
        out: list[str] = []
        url: str | None = f"/v2/{repo}/tags/list?n={TAGS_PAGE}"
        seen = set()
        while url and url not in seen:
            seen.add(url)
            try:
                resp = self.request("GET", url, scope=self._scope(repo), what=f"tags of {repo}")
            except NotFoundError:
                return out
            out += [t for t in (resp.json().get("tags") or []) if isinstance(t, str)]
            m = _LINK_NEXT.search(resp.headers.get("link", ""))
            url = None
            if m:
                nxt = m[1]
                url = nxt if nxt.startswith(("http://", "https://", "/")) else "/" + nxt
                if url.startswith(("http://", "https://")) and not url.startswith(self.base + "/"):
                    url = None  # a page on another host: not followed
        return out

    # ------------------------------------------------------------------ manifests

    def get_manifest(self, repo: str, reference: str) -> tuple[bytes, str] | None:
        """(bytes, digest) of a manifest by tag or digest, the digest checked against the
        bytes; None when there is no such tag."""
        what = f"{self.host}/{repo}:{reference}" if not reference.startswith("sha256:") else \
            f"{self.host}/{repo}@{reference}"
        try:
            resp = self.request("GET", f"/v2/{repo}/manifests/{reference}", scope=self._scope(repo), what=what,
                                stream=True, headers={"Accept": OCI_MANIFEST})
        except NotFoundError:
            return None
        try:
            body = b""
            with self._errors(what):
                for chunk in resp.iter_raw(1 << 16):
                    body += chunk
                    if len(body) > MANIFEST_LIMIT:
                        raise IntegrityError(f"{what}: the manifest is larger than {MANIFEST_LIMIT >> 20} MiB")
        finally:
            resp.close()
        digest = sha256_digest(body)
        claimed = resp.headers.get("docker-content-digest")
        if reference.startswith("sha256:") and digest != reference:
            raise IntegrityError(f"{what}: the registry sent a manifest whose digest is {digest}",
                                 hint="nothing was recorded; the registry's storage is damaged or tampered with")
        if claimed and claimed.startswith("sha256:") and claimed != digest:
            raise IntegrityError(f"{what}: the manifest's bytes hash to {digest}, the registry says {claimed}",
                                 hint="nothing was recorded; the registry's storage is damaged or tampered with")
        return body, digest

    def head_manifest(self, repo: str, reference: str) -> str | None:
        """The digest a tag points at, or None when there is no such tag. A registry need not
        send ``Docker-Content-Digest`` (the distribution spec says it SHOULD): without it the
        manifest is fetched and hashed, never taken for an absent tag (a push would then
        overwrite what the tag holds)."""
        try:
            resp = self.request("HEAD", f"/v2/{repo}/manifests/{reference}", scope=self._scope(repo),
                                what=f"{self.host}/{repo}:{reference}", headers={"Accept": OCI_MANIFEST})
        except NotFoundError:
            return None
        got = resp.headers.get("docker-content-digest")
        if got and _DIGEST.fullmatch(got):
            return got
        fetched = self.get_manifest(repo, reference)
        return fetched[1] if fetched is not None else None

    def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str = OCI_MANIFEST) -> str:
        digest = sha256_digest(body)
        self.request("PUT", f"/v2/{repo}/manifests/{reference}", scope=self._scope(repo, True),
                     what=f"push {self.host}/{repo}:{reference}", ok=(200, 201),
                     content=body, headers={"Content-Type": media_type})
        return digest

    # ------------------------------------------------------------------ blobs

    def has_blob(self, repo: str, digest: str) -> bool:
        try:
            self.request("HEAD", f"/v2/{repo}/blobs/{digest}", scope=self._scope(repo, True),
                         what=f"blob {digest[:19]} in {self.host}/{repo}")
            return True
        except NotFoundError:
            return False

    def push_blob(self, repo: str, digest: str, size: int, source: Path | bytes, *, missing: bool = False) -> bool:
        """Upload a blob unless the repository has it; False when it was there already
        (``missing``: the caller has just asked, so do not ask again). The bytes are hashed as
        they go: a source that does not hash to ``digest`` is not stored (IntegrityError; the
        registry refuses the upload too)."""
        if not missing and self.has_blob(repo, digest):
            return False
        what = f"push blob {digest[:19]} to {self.host}/{repo}"
        scope = self._scope(repo, True)
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/", scope=scope, what=what, ok=(202,))
        location = self._location(resp, what)
        h = hashlib.sha256()
        if isinstance(source, bytes):
            h.update(source)
            self._check(h, digest, what)
            self.request("PUT", _with_digest(location, digest), scope=scope, what=what, ok=(201,),
                         content=source, headers={"Content-Type": "application/octet-stream"})
            return True
        with open(source, "rb") as fh:
            if size <= CHUNKED_ABOVE:
                self.request("PUT", _with_digest(location, digest), scope=scope, what=what, ok=(201,),
                             content=_reader(fh, h, size, digest, what),
                             headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)})
                return True
            offset = 0
            while offset < size:
                n = min(CHUNKED_ABOVE, size - offset)
                resp = self.request("PATCH", location, scope=scope, what=what, ok=(202,),
                                    content=_reader(fh, h, n, None, what),
                                    headers={"Content-Type": "application/octet-stream", "Content-Length": str(n),
                                             "Content-Range": f"{offset}-{offset + n - 1}"})
                location = self._location(resp, what)
                offset += n
            self._check(h, digest, what)
            self.request("PUT", _with_digest(location, digest), scope=scope, what=what, ok=(201,),
                         headers={"Content-Length": "0"})
        return True

    def _location(self, resp: Any, what: str) -> str:
        loc = resp.headers.get("location")
        if not loc:
            raise OciUnavailableError(f"{what}: the registry gave no upload location")
        return loc if loc.startswith(("http://", "https://")) else self.base + loc

    @staticmethod
    def _check(h: Any, digest: str, what: str) -> None:
        if "sha256:" + h.hexdigest() != digest:
            raise IntegrityError(f"{what}: the local bytes do not hash to {digest}; nothing was pushed")

    def fetch_blob(self, repo: str, digest: str, out: BinaryIO, *, size: int | None = None,
                   limit: int | None = None) -> int:
        """Stream a blob into ``out``, hashing it; IntegrityError if a whole body does not match
        ``digest`` (or ``size``, or is longer than ``limit``), OciUnavailableError if the connection
        ends before the body does (a transport failure: retry). The bytes written."""
        if not _DIGEST.fullmatch(digest):
            raise IntegrityError(f"{digest!r} is not a sha256 digest")
        what = f"{self.host}/{repo}@{digest[:19]}"
        resp = self.request("GET", f"/v2/{repo}/blobs/{digest}", scope=self._scope(repo), what=what, stream=True)
        h = hashlib.sha256()
        n = 0
        cap = limit if limit is not None else (size if size is not None else None)
        try:
            with self._errors(what):
                for chunk in resp.iter_raw(CHUNK):
                    n += len(chunk)
                    if cap is not None and n > cap:
                        raise IntegrityError(f"{what}: the blob is longer than the {cap} bytes expected",
                                             hint="nothing was recorded; the registry's storage is damaged or "
                                                  "tampered with")
                    h.update(chunk)
                    out.write(chunk)
        finally:
            resp.close()
        if size is not None and n < size and resp.close_delimited:  # no length said: the connection just ended
            raise OciUnavailableError(f"{what}: the connection to {resp.origin} closed after {n} of {size} bytes",
                                      hint="nothing was recorded; retry")
        if size is not None and n != size:
            raise IntegrityError(f"{what}: the registry sent {n} bytes for a blob of {size}",
                                 hint="nothing was recorded; the registry's storage is damaged or tampered with")
        if "sha256:" + h.hexdigest() != digest:
            raise IntegrityError(f"{what}: the blob's bytes do not match its digest",
                                 hint="nothing was recorded; the registry's storage is damaged or tampered with")
        return n

    def fetch_small(self, repo: str, digest: str, limit: int) -> bytes:
        import io

        buf = io.BytesIO()
        self.fetch_blob(repo, digest, buf, limit=limit)
        return buf.getvalue()


def _with_digest(location: str, digest: str) -> str:
    """An upload URL with ``digest=`` added to the query it already has (``_state`` and such)."""
    return location + ("&" if "?" in location else "?") + "digest=" + digest.replace(":", "%3A")


def _reader(fh: BinaryIO, h: Any, n: int, digest: str | None, what: str) -> Iterator[bytes]:
    """``n`` bytes of ``fh`` in chunks, hashed on the way; with ``digest``, checked at the end
    (before the request's body is complete, so a mismatch aborts the upload)."""
    left = n
    while left > 0:
        chunk = fh.read(min(CHUNK, left))
        if not chunk:
            raise IntegrityError(f"{what}: the local file is shorter than its recorded size")
        left -= len(chunk)
        h.update(chunk)
        if left == 0 and digest is not None:
            OciClient._check(h, digest, what)
        yield chunk
