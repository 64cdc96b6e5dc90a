"""botocore's errors as the S3 blob store reports them: one line with what to do (the standard
AWS configuration only), and the status checks its conditional writes rely on."""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any

from .errors import RegistryError

if TYPE_CHECKING:
    from .s3_blobs import S3BlobStore


def _code(exc: BaseException) -> str:
    resp = getattr(exc, "response", None) or {}
    return str(resp.get("Error", {}).get("Code", "")) or str(resp.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))


def _absent(exc: BaseException) -> bool:
    return _code(exc) in ("404", "NoSuchKey", "NotFound")


def _precondition(exc: BaseException) -> bool:
    return _code(exc) in ("412", "PreconditionFailed", "ConditionalRequestConflict", "409")


#: botocore errors that concern the whole store, not one object
_STORE_WIDE = ("NoCredentialsError", "PartialCredentialsError", "ProfileNotFound", "EndpointConnectionError",
               "ConnectTimeoutError")


def _store_error(store: S3BlobStore, exc: BaseException) -> RegistryError | None:
    """An error that concerns the whole store (its bucket, credentials or endpoint) as
    :func:`_user_error` words it, to be raised once rather than reported once per blob; None
    for an error about one object."""
    if _code(exc) == "NoSuchBucket" or type(exc).__name__ in _STORE_WIDE:
        return _user_error(store, exc)
    return None


def _where(store: S3BlobStore) -> str:
    endpoint = getattr(getattr(store._client, "meta", None), "endpoint_url", None)
    return f"{store} (endpoint {endpoint})" if endpoint else str(store)


def _no_bucket(store: S3BlobStore) -> RegistryError:
    return RegistryError(f"the S3 bucket of {_where(store)} does not exist",
                         hint=f"create it (aws s3 mb s3://{store.bucket}) or fix --blobs / ADAPTERHUB_BLOBS")


def _not_s3(store: S3BlobStore) -> RegistryError:
    return RegistryError(f"the endpoint of {_where(store)} answers, but not as an S3 server (HTTP 404 without an "
                         "S3 error code, for the bucket and for a listing of it)",
                         hint="check AWS_ENDPOINT_URL (or the profile's endpoint_url): it must be the S3 API's "
                              "address, not another service's")


def _user_error(store: S3BlobStore, exc: BaseException) -> RegistryError:
    """A botocore error as one line with what to do (the standard AWS configuration only)."""
    code, name = _code(exc), type(exc).__name__
    where = _where(store)
    if code == "NoSuchBucket":
        return _no_bucket(store)
    if name in ("NoCredentialsError", "PartialCredentialsError", "ProfileNotFound"):
        return RegistryError(f"no usable AWS credentials for {where} ({exc})",
                             hint="set AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return RegistryError(f"S3 refused access to {where} ({code})",
                             hint="the credentials need s3:GetObject, s3:PutObject, s3:DeleteObject and "
                                  "s3:ListBucket on the bucket (pulling: GetObject and ListBucket)")
    if code in ("501", "NotImplemented"):
        return RegistryError(f"the S3 server of {where} does not implement a request this store needs ({exc})",
                             hint="it must support conditional writes (If-None-Match on PutObject and "
                                  "CompleteMultipartUpload); see docs/teams.md")
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError"):
        return RegistryError(f"cannot reach the S3 server of {where} ({name})",
                             hint="check AWS_ENDPOINT_URL (or the profile's endpoint_url) and the network")
    return RegistryError(f"S3 request to {where} failed: {exc}",
                         hint="check the bucket, the credentials and AWS_ENDPOINT_URL")


def _s3_errors(method: Any) -> Any:
    """Turn botocore errors escaping ``method`` (a generator's too) into one-line RegistryErrors."""
    def translate(self: S3BlobStore, exc: Exception) -> BaseException:
        return _user_error(self, exc) if type(exc).__module__.split(".", 1)[0] in ("botocore", "boto3") else exc

    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def gen(self: S3BlobStore, *args: Any, **kw: Any) -> Any:
            try:
                yield from method(self, *args, **kw)
            except Exception as exc:
                raise translate(self, exc) from exc
        return gen

    @functools.wraps(method)
    def wrapper(self: S3BlobStore, *args: Any, **kw: Any) -> Any:
        try:
            return method(self, *args, **kw)
        except Exception as exc:
            err = translate(self, exc)
            if err is exc:
                raise
            raise err from exc
    return wrapper
