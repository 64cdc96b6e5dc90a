"""S3-compatible blob store: ``s3://BUCKET/PREFIX``, objects at ``PREFIX/sha256/ab/cdef...``.

The built-in ``s3`` storage, registered through ``register_storage`` like a plugin's.
Endpoint, region and credentials come from the standard AWS configuration (environment,
profiles, ``AWS_ENDPOINT_URL``) through boto3, which is imported only when a store is used
(the ``s3`` extra installs it).

- Writes are conditional (``If-None-Match: *`` on PutObject and on
  CompleteMultipartUpload): an object, once at its address, is never overwritten by a
  second publisher of the same blob. A 412 means it is already there; it is then verified
  (and only a corrupt object is deleted and written again, conditionally as well).
- Reads stream and hash, and refuse a mismatch with IntegrityError naming the blob.
- Files over one part (8 MiB) go up by multipart upload, 8 parts at a time, each with its
  CRC32 (checked by the server, as boto3's transfer manager asks), with progress on a terminal.
- gc safety. S3 has no mtime touch and no atomic rename, so a blob's age is its
  LastModified (reuse does not refresh it) and the safety comes from the catalog and the
  order of operations instead: the store stages (publish copies and hashes each file into
  a private local temp file first) and quarantines (gc copies the blob to
  ``PREFIX/gc/...`` and deletes it from its address, then asks the catalog again, and
  puts it back if a version referenced it meanwhile). A publish that reused a blob checks
  after its commit that the blob is still at its address and uploads its staged copy if
  not; since gc deletes before it asks again, one of the two always sees the other.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import urlparse

from .adapter_files import open_regular
from .errors import IntegrityError, NotFoundError, RegistryError
from .hookspecs import hookimpl
from .s3_errors import _absent, _code, _no_bucket, _not_s3, _precondition, _s3_errors, _store_error
from .s3_staging import PREFIX, SUFFIX, clean_staging, lock_staged, staging_dir
from .store_owner import OwnerObject

if TYPE_CHECKING:
    from .interfaces import QuarantiningBlobStorage, StagingBlobStorage

_HEX = re.compile(r"[0-9a-f]{64}")
BUF = 1 << 20
#: multipart part size; a file larger than one part goes up in parts
PART_SIZE = 8 << 20
#: parts uploaded at once (botocore clients are thread-safe; boto3's transfer manager uses 10)
UPLOAD_THREADS = 8


def _check(digest: str) -> str:
    if not isinstance(digest, str) or not _HEX.fullmatch(digest):
        raise ValueError(f"not a sha256 hex digest: {digest!r}")
    return digest


@dataclass
class S3StagedBlob:
    """A private, hashed local copy, waiting to be uploaded."""

    path: Path
    sha256: str
    size: int
    lock: int = field(default=-1, compare=False, repr=False)  # flock held while the publish lives


#: the first botocore whose PutObject and CopyObject both take IfNoneMatch: every write here is
#: conditional (two publishers of a blob never overwrite each other; gc's put-back never
#: overwrites a blob written meanwhile). An older one failed every publish, or gc's put-back.
BOTOCORE_MIN = (1, 41)


def _too_old(version: str) -> bool:
    parts = []
    for p in version.split(".")[:2]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts) < BOTOCORE_MIN


class S3BlobStore(OwnerObject):
    """Blobs in an S3 bucket under a prefix; ``client`` defaults to ``boto3.client("s3")``."""

    def __init__(self, bucket: str, prefix: str = "", *, client: Any = None, part_size: int = PART_SIZE):
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.part_size = part_size
        self._client = client
        self._warming: threading.Thread | None = None
        self._lock = threading.Lock()
        self._bucket_seen = False

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._warming is not None:
                    self._warming.join()
                    self._warming = None
                if self._client is None:  # not warmed, or warming failed: made here, its error raised here
                    self._client = self._make_client()
        return self._client

    @staticmethod
    def _make_client() -> Any:
        try:  # botocore, boto3's core: the same configuration chain, without boto3's ~0.4 s import
            import botocore
            import botocore.session
        except ImportError:
            raise RegistryError("s3:// blob stores need boto3",
                                hint="pip install 'adapterhub_sdk[s3]'") from None
        if _too_old(botocore.__version__):
            raise RegistryError(f"s3:// blob stores need botocore {'.'.join(map(str, BOTOCORE_MIN))} or newer for "
                                f"conditional writes (If-None-Match on PutObject and CopyObject); this is "
                                f"{botocore.__version__}", hint=f"pip install 'boto3>={'.'.join(map(str, BOTOCORE_MIN))}'")
        return botocore.session.get_session().create_client("s3")

    def _warm_client(self) -> None:
        """Start making the client in a thread (botocore's import and service model: ~0.3 s
        of CPU) while the caller does work that releases the GIL (copying and hashing a file);
        :attr:`client` waits for it."""
        with self._lock:
            if self._client is not None or self._warming is not None:
                return
            self._warming = threading.Thread(target=self._warm, name="adapterhub-s3-client", daemon=True)
            self._warming.start()

    def _warm(self) -> None:
        try:
            client = self._make_client()
        except Exception:  # noqa: S110 - made again, and its error raised, on first use
            return
        self._client = client

    def key(self, digest: str) -> str:
        d = _check(digest)
        return f"{self.prefix}sha256/{d[:2]}/{d[2:]}"

    def _missing(self, digest: str) -> NotFoundError:
        return NotFoundError(f"blob sha256:{digest[:12]} is missing from {self}",
                             hint="run 'adapterhub verify', then publish the same files again under the same name@version")

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.head_object(Bucket=self.bucket, Key=key))
        except Exception as exc:
            if _absent(exc):
                self._check_bucket()
                return None
            raise

    def _check_bucket(self) -> None:
        """After a 404: RegistryError if the bucket itself does not exist. A HEAD's 404 has no
        body, so it does not say whether the object or the bucket is missing; the bucket is
        asked (once per store, when it answers; a refusal, e.g. 403 without s3:ListBucket, is
        no "missing": the object is then reported missing as before)."""
        if self._bucket_seen:
            return
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            if _code(exc) == "NoSuchBucket":
                raise _no_bucket(self) from exc
            if not _absent(exc):
                return  # not known to be missing: asked again after the next 404
            try:  # a HEAD's 404 has no body: any HTTP server answers so. A listing's error says which
                self.client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
            except Exception as again:
                if _code(again) == "NoSuchBucket":
                    raise _no_bucket(self) from exc
                if _absent(again):
                    raise _not_s3(self) from exc
                return
            return  # it lists: the bucket is there after all
        self._bucket_seen = True

    # reads

    def _stream(self, digest: str, out: BinaryIO | None) -> tuple[str, int] | None:
        """(sha256, size) of the stored object, written into ``out`` as it streams; None if absent."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(digest))["Body"]
        except Exception as exc:
            if _absent(exc):
                self._check_bucket()
                return None
            raise
        h = hashlib.sha256()
        n = 0
        with body:
            while chunk := body.read(BUF):
                h.update(chunk)
                if out is not None:
                    out.write(chunk)
                n += len(chunk)
        return h.hexdigest(), n

    @_s3_errors
    def copy_verified(self, digest: str, out: BinaryIO) -> int:
        """Stream a blob into ``out``, hashing as it goes; IntegrityError if it does not match.
        The caller must discard ``out`` on error (pull writes into a temp dir)."""
        got = self._stream(digest, out)
        if got is None:
            raise self._missing(digest)
        if got[0] != digest:
            raise IntegrityError(f"blob sha256:{digest[:12]} in {self} is corrupt: its bytes no longer match "
                                 "its digest", hint="run 'adapterhub verify'; publish the same files again to repair it")
        return got[1]

    def open_verified(self, digest: str) -> bytes:
        import io

        buf = io.BytesIO()
        self.copy_verified(digest, buf)
        return buf.getvalue()

    def verify(self, digest: str) -> str | None:
        """None if the blob is intact, else what is wrong. A missing bucket, missing credentials
        or an unreachable endpoint concern every blob: raised (one line), not reported per blob."""
        try:
            got = self._stream(digest, None)
        except RegistryError:
            raise
        except Exception as exc:
            if (err := _store_error(self, exc)) is not None:
                raise err from exc
            return f"unreadable ({_code(exc) or exc})"
        if got is None:
            return "missing"
        return None if got[0] == digest else "corrupt (digest mismatch)"

    @_s3_errors
    def size(self, digest: str) -> int:
        head = self._head(self.key(digest))
        return int(head["ContentLength"]) if head else 0

    @_s3_errors
    def has(self, digest: str) -> bool:
        return self._head(self.key(digest)) is not None

    @_s3_errors
    def age(self, digest: str) -> float:
        """Seconds since the object was written (LastModified; S3 cannot refresh it)."""
        head = self._head(self.key(digest))
        return time.time() - head["LastModified"].timestamp() if head else 0.0

    @_s3_errors
    def iter_digests(self) -> Iterator[str]:
        root = f"{self.prefix}sha256/"
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root):
            for obj in page.get("Contents", ()):
                rest = obj["Key"][len(root):]
                d = rest.replace("/", "", 1)
                if rest[2:3] == "/" and _HEX.fullmatch(d):
                    yield d

    # writes

    def stage(self, source: str | os.PathLike[str] | BinaryIO) -> S3StagedBlob:
        """Copy ``source`` (a regular file, not followed through a link, or a file opened for
        reading, from its start) into a private local temp file, hashing as it copies: what
        is uploaded later is exactly what was hashed."""
        from .blobs import _copy_hashed

        self._warm_client()  # the first request will need it: made meanwhile, while this copies
        fd, name = tempfile.mkstemp(prefix=PREFIX, suffix=SUFFIX, dir=staging_dir())  # gc cleans what a kill left
        tmp = Path(name)
        lock = -1
        try:
            lock = lock_staged(name)  # held until discard: gc leaves a live publish's copy alone
            try:  # the kernel copies; the copy is hashed as the local store hashes it: what is hashed is what goes up
                if isinstance(source, (str, os.PathLike)):
                    with open_regular(source, what="file") as f:
                        n, digest = _copy_hashed(f.fileno(), fd)
                else:
                    try:
                        src_fd = source.fileno()
                    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: an in-memory file
                        src_fd = None
                    if src_fd is None:
                        source.seek(0)
                        h = hashlib.sha256()
                        with open(fd, "wb", closefd=False) as dst:
                            n = _copy_hash(source, dst, h)  # each chunk hashed as it is written
                        digest = h.hexdigest()
                    else:
                        os.lseek(src_fd, 0, os.SEEK_SET)
                        n, digest = _copy_hashed(src_fd, fd)
            finally:
                os.close(fd)
            return S3StagedBlob(tmp, digest, n, lock)
        except BaseException:
            tmp.unlink(missing_ok=True)
            if lock >= 0:
                os.close(lock)
            raise

    def discard(self, staged: S3StagedBlob) -> None:
        staged.path.unlink(missing_ok=True)
        if staged.lock >= 0:
            os.close(staged.lock)
            staged.lock = -1

    @_s3_errors
    def holds(self, staged: S3StagedBlob) -> bool:
        """Whether the blob ``staged`` would write is stored intact (hashed: a corrupt object
        is not deduplicated against)."""
        head = self._head(self.key(staged.sha256))
        return head is not None and int(head["ContentLength"]) == staged.size and self.verify(staged.sha256) is None

    @_s3_errors
    def put_file(self, source: str | os.PathLike[str] | BinaryIO, digest: str) -> int:
        """Store ``source`` under ``digest`` (0 bytes written if already stored intact);
        IntegrityError, and nothing stored, if the bytes do not hash to ``digest``."""
        _check(digest)
        if self.verify(digest) is None:
            return 0
        staged = self.stage(source)
        try:
            if staged.sha256 != digest:
                raise IntegrityError(f"content changed while it was stored: expected sha256 {digest[:12]}, "
                                     f"got {staged.sha256[:12]}", hint="do not modify the adapter while publishing")
            return self.put_staged(staged)
        finally:
            self.discard(staged)

    @_s3_errors
    def put_staged(self, staged: S3StagedBlob) -> int:
        """Upload a staged copy under its digest, conditionally: 0 bytes if an intact object is
        there already (a corrupt one is deleted and written again)."""
        try:
            if not staged.path.exists():
                raise IntegrityError(f"the staged copy of blob sha256:{staged.sha256[:12]} was removed while "
                                     "publishing (by 'adapterhub gc --grace 0'?)",
                                     hint="publish again; run gc with its default grace while others publish")
            for _ in range(3):
                if self._upload(staged.path, self.key(staged.sha256), staged.size):
                    return staged.size
                problem = self.verify(staged.sha256)
                if problem is None:
                    return 0
                if problem != "missing":
                    self.client.delete_object(Bucket=self.bucket, Key=self.key(staged.sha256))
            raise IntegrityError(f"blob sha256:{staged.sha256[:12]} in {self} could not be written intact",
                                 hint="another writer keeps replacing it; check who writes to this bucket")
        finally:
            self.discard(staged)

    def _upload(self, path: Path, key: str, size: int) -> bool:
        """Upload ``path`` to ``key`` unless an object is there; whether it was written."""
        try:
            if size <= self.part_size:
                with open(path, "rb") as f:
                    self.client.put_object(Bucket=self.bucket, Key=key, Body=f, IfNoneMatch="*")
            else:
                self._multipart(path, key, size)
            return True
        except Exception as exc:
            if _precondition(exc):
                return False
            raise

    def _multipart(self, path: Path, key: str, size: int) -> None:
        """Upload in parts, ``UPLOAD_THREADS`` at a time (each reads its own range: at most that
        many parts in memory), then complete conditionally; abort on any failure."""
        # a CRC32 per part, as boto3's transfer manager asks for (unless the AWS configuration says
        # when_required): the server checks each part against it, and an upload created without an
        # algorithm makes S3 (and moto) compute a full-object CRC64 over every byte at completion
        crc = getattr(self.client.meta.config, "request_checksum_calculation", None) != "when_required"
        algo = {"ChecksumAlgorithm": "CRC32"} if crc else {}
        up = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, **algo)["UploadId"]
        bar = _progress(size, f"upload {key.rsplit('/', 1)[-1][:12]}")
        lock = threading.Lock()
        n_parts = -(-size // self.part_size)
        try:
            with open(path, "rb") as f:
                fd = f.fileno()

                def part(number: int) -> dict[str, Any]:
                    chunk = os.pread(fd, self.part_size, (number - 1) * self.part_size)
                    r = self.client.upload_part(Bucket=self.bucket, Key=key, UploadId=up, PartNumber=number,
                                                Body=chunk, **algo)
                    if bar is not None:
                        with lock:
                            bar.update(len(chunk))
                    done = {"PartNumber": number, "ETag": r["ETag"]}
                    if crc and r.get("ChecksumCRC32"):  # the server checked the part against it
                        done["ChecksumCRC32"] = r["ChecksumCRC32"]
                    return done

                with ThreadPoolExecutor(max_workers=min(UPLOAD_THREADS, n_parts)) as pool:
                    parts = list(pool.map(part, range(1, n_parts + 1)))
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=up,
                                                  MultipartUpload={"Parts": parts}, IfNoneMatch="*")
        except BaseException:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=up)
            except Exception:  # noqa: S110 - clean_temp aborts it later
                pass
            raise
        finally:
            if bar is not None:
                bar.close()

    @_s3_errors
    def delete(self, digest: str) -> int:
        size = self.size(digest)
        if size or self.has(digest):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(digest))
        return size

    # gc

    @_s3_errors
    def quarantine(self, digest: str) -> str | None:
        """Copy the blob to ``PREFIX/gc/...`` and delete it from its address (gc's first step):
        a publish that looks for it from now on writes its own copy. The token is the copy's
        key, or None if the blob was not there."""
        token = f"{self.prefix}gc/{digest}.{os.getpid()}.{time.time_ns()}"
        try:
            self.client.copy_object(Bucket=self.bucket, Key=token,
                                    CopySource={"Bucket": self.bucket, "Key": self.key(digest)})
        except Exception as exc:
            if _absent(exc):
                return None
            raise
        self.client.delete_object(Bucket=self.bucket, Key=self.key(digest))
        return token

    @_s3_errors
    def release(self, token: str, digest: str, *, keep: bool) -> int:
        """Finish a quarantine: put the blob back (``keep``), unless a publish wrote it again
        meanwhile, or delete it. Returns the bytes freed."""
        head = self._head(token)
        if head is None:
            return 0
        if keep:
            try:  # If-None-Match on a copy is honoured by AWS (moto ignores it: hence has() first)
                if not self.has(digest):
                    self.client.copy_object(Bucket=self.bucket, Key=self.key(digest), IfNoneMatch="*",
                                            CopySource={"Bucket": self.bucket, "Key": token})
            except Exception as exc:
                if not _precondition(exc):
                    raise
            self.client.delete_object(Bucket=self.bucket, Key=token)
            return 0
        self.client.delete_object(Bucket=self.bucket, Key=token)
        return int(head["ContentLength"])

    @_s3_errors
    def clean_temp(self, older_than: float, *, dry_run: bool = False, keep: Collection[str] = ()) -> int:
        """Abort multipart uploads started more than ``older_than`` seconds ago (except those of
        the blobs in ``keep``: leased by publishes in progress), and put back blobs an
        interrupted gc left in quarantine that long (the next gc judges them again against the
        catalog, rather than deleting what a version may reference)."""
        now = time.time()
        n = 0
        root = f"{self.prefix}sha256/"
        for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=root):
            for up in page.get("Uploads", ()):
                if now - up["Initiated"].timestamp() < older_than or up["Key"][len(root):].replace("/", "", 1) in keep:
                    continue
                n += 1
                if not dry_run:
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
        gc_root = f"{self.prefix}gc/"
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=gc_root):
            for obj in page.get("Contents", ()):
                digest = obj["Key"][len(gc_root):].split(".", 1)[0]
                if now - obj["LastModified"].timestamp() < older_than or not _HEX.fullmatch(digest):
                    continue
                n += 1
                if not dry_run:
                    self.release(obj["Key"], digest, keep=True)
        return n + clean_staging(older_than, dry_run=dry_run)


def _copy_hash(src: Any, dst: BinaryIO, h: Any) -> int:
    n = 0
    while chunk := src.read(BUF):
        h.update(chunk)
        dst.write(chunk)
        n += len(chunk)
    return n


def _progress(total: int, desc: str) -> Any:
    if not sys.stderr.isatty():
        return None  # tqdm would draw nothing off a terminal: not worth its import
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, leave=False)


def _s3_store(url: str) -> S3BlobStore:
    parsed = urlparse(url)
    if not parsed.netloc:
        raise NotFoundError(f"{url}: an S3 blob store is s3://BUCKET[/PREFIX]")
    return S3BlobStore(parsed.netloc, parsed.path)


@hookimpl
def register_storage(register):
    register("s3", _s3_store)


if TYPE_CHECKING:  # mypy checks that the S3 store has both optional capabilities
    _staging: type[StagingBlobStorage] = S3BlobStore
    _quarantining: type[QuarantiningBlobStorage] = S3BlobStore
