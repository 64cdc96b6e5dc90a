"""Adversarial review of the remote/store work: the NaN/Inf prefilter against torch, the
fingerprint's read-based hashing against an independent implementation of its definition,
OCI artifacts whose tags, annotations or config lie, and pulls killed mid-way (real
processes, SIGKILL) leaving nothing half-written."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from ociserver import REGISTRY, SKIP_REASON
from safetensors.torch import save_file

import adapterhub_sdk as ah
from adapterhub_sdk import adapter_files
from adapterhub_sdk.adapter_files import nonfinite_tensors
from adapterhub_sdk.errors import AdapterHubError, IntegrityError
from adapterhub_sdk.fingerprint import fingerprint

needs_oci = pytest.mark.skipif(REGISTRY is None, reason=SKIP_REASON)

# ---------------------------------------------------------------------------- NaN / Inf prefilter

_FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2,
           torch.complex64]


def _count_nonfinite(t: torch.Tensor) -> int:
    if t.is_complex():
        return int((~torch.isfinite(torch.view_as_real(t))).sum())
    return int((~torch.isfinite(t.to(torch.float64))).sum())


@pytest.mark.parametrize("step", [None, 24])  # the default slice, and many slices per tensor
@pytest.mark.parametrize("seed", range(4))
def test_the_prefilter_and_count_agree_with_torch_isfinite(tmp_path, monkeypatch, seed, step):
    monkeypatch.setattr(adapter_files, "_PREFILTER", True)  # this process has numpy: force the prefilter
    if step:
        monkeypatch.setattr(adapter_files, "_PREFILTER_STEP", step)
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    tensors: dict[str, torch.Tensor] = {}
    for dtype in _FLOATS:
        for k in range(5):
            n = int(rng.choice([1, 3, 7, 17, 255, 1001, 4099]))
            base = torch.randn(n, generator=g, dtype=torch.float64) * float(rng.choice([1e-3, 1, 1e3, 6e4]))
            if dtype.is_floating_point and dtype.itemsize == 1:
                base = base.clamp(-57000, 57000) if dtype == torch.float8_e5m2 else base.clamp(-448, 448)
            elif dtype == torch.float16:
                base = base.clamp(-65504, 65504)
            t = base.to(torch.complex64) if dtype.is_complex else base.to(dtype)
            hits = {0: [], 1: [n - 1], 2: sorted(set(rng.integers(0, n, 3).tolist())), 3: [], 4: [n // 2]}[k]
            for i in hits:
                bad = [float("nan"), float("inf"), float("-inf")][int(rng.integers(0, 3))]
                if dtype == torch.float8_e4m3fn:
                    bad = float("nan")  # no Inf in e4m3fn
                t[i] = complex(0.5, bad) if dtype.is_complex else bad
            tensors[f"{str(dtype).split('.')[1]}.{k}"] = t
    # values whose top byte matches the mask but that are finite (the largest magnitudes)
    tensors["edge.f16"] = torch.tensor([65504.0, -65504.0, 6.1e-5], dtype=torch.float16)
    tensors["edge.bf16"] = torch.tensor([3.0e38, -3.0e38], dtype=torch.bfloat16)
    tensors["edge.e4m3"] = torch.tensor([448.0, -448.0], dtype=torch.float8_e4m3fn)
    tensors["edge.e5m2"] = torch.tensor([57344.0, -57344.0], dtype=torch.float8_e5m2)
    tensors["edge.e8m0"] = torch.tensor([1.0, 2.0 ** 127, 2.0 ** -127], dtype=torch.float8_e8m0fnu)  # 0xFE: finite
    tensors["e8m0.nan"] = torch.tensor([4.0] * (2 * seed + 3) + [float("nan")], dtype=torch.float8_e8m0fnu)
    tensors["ints"] = torch.full((9,), 0x7F, dtype=torch.uint8)
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path))
    want = {name: c for name, t in tensors.items() if t.is_floating_point() or t.is_complex()
            if (c := _count_nonfinite(t))}
    got = {f.tensor: f.count for f in nonfinite_tensors(path)}
    assert got == want


# ---------------------------------------------------------------------------- fingerprint

MiB8 = 8 * 1024 * 1024


def _definition(tensors: dict[str, tuple[str, list[int], bytes]]) -> str:
    """The fingerprint as fingerprint.py's docstring defines it, written from the docstring."""
    top = hashlib.sha256(b"adapterhub-fingerprint-v1\n")
    for name in sorted(tensors):
        dtype, shape, raw = tensors[name]
        chunks = b"".join(hashlib.sha256(raw[o:o + MiB8]).digest() for o in range(0, len(raw), MiB8))
        content = hashlib.sha256(chunks).digest()
        top.update(hashlib.sha256(b"adapterhub-tensor-v1\0" + name.encode() + b"\0" + dtype.encode() + b"\0"
                                  + json.dumps(shape, separators=(",", ":")).encode() + b"\0" + content).digest())
    return top.hexdigest()


def _write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int], bytes]], order: list[str],
                       pad: int = 0) -> None:
    """A hand-written safetensors file: tensors laid out in ``order``, header padded with spaces."""
    header: dict[str, object] = {"__metadata__": {"note": "x" * pad}}
    off = 0
    for n in order:
        dtype, shape, raw = tensors[n]
        header[n] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little") + h)
        for n in order:
            f.write(tensors[n][2])


def test_read_based_hashing_matches_the_definition_for_every_layout(tmp_path):
    rng = np.random.default_rng(7)
    tensors: dict[str, tuple[str, list[int], bytes]] = {}
    read = 1 << 20  # the engine's sub-read
    for i, n in enumerate([0, 1, MiB8 - 1, MiB8, MiB8 + 1, 3 * MiB8 + 5, read - 1, read, read + 1, 3 * read + 7]):
        tensors[f"big.{i}"] = ("U8", [n], rng.bytes(n))
    tensors["f32.odd"] = ("F32", [3, 5, 7], rng.bytes(4 * 105))
    tensors["f32.empty"] = ("F32", [0, 4], b"")
    tensors["bf16.over"] = ("BF16", [MiB8 // 2 + 3], rng.bytes(2 * (MiB8 // 2 + 3)))
    for i in range(300):
        k = int(rng.integers(0, 5000))
        tensors[f"small.{i:03d}"] = ("U8", [k], rng.bytes(k))
    want = _definition(tensors)
    names = list(tensors)
    one = tmp_path / "one.safetensors"
    _write_safetensors(one, tensors, list(rng.permutation(names)), pad=13)  # file order is not name order
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    parts = np.array_split(np.array(rng.permutation(names)), 3)
    weight_map = {}
    for j, part in enumerate(parts):
        fname = f"model-{j + 1:05d}-of-00003.safetensors"
        _write_safetensors(sharded / fname, tensors, list(part), pad=j)
        weight_map.update({n: fname for n in part})
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for workers in (1, 2, 3):
        for where in (one, sharded):
            assert fingerprint(where, workers=workers, use_cache=False).digest == want, (where, workers)
    state = {n: torch.frombuffer(bytearray(raw), dtype={"U8": torch.uint8, "F32": torch.float32,
                                                        "BF16": torch.bfloat16}[d]).reshape(s)
             if raw else torch.empty(s, dtype={"U8": torch.uint8, "F32": torch.float32}[d])
             for n, (d, s, raw) in tensors.items()}
    assert fingerprint(state, workers=2).digest == want


# ---------------------------------------------------------------------------- OCI: lying artifacts


def _open(tmp_path: Path, name: str) -> ah.Registry:
    return ah.Registry.open(f"sqlite:///{tmp_path / (name + '.db')}", blobs=tmp_path / (name + "-blobs"))


def _repo(request) -> str:
    return "review/" + hashlib.sha256(request.node.name.encode()).hexdigest()[:12]


@needs_oci
def test_a_build_metadata_twin_tag_is_not_pulled_for_the_version_asked(oci, tmp_path, base_dir, lora_dir,
                                                                       lora_dir_b, request):
    """1.0.0 and 1.0.0_b1 in one repository (pushed from two registries: here they could not
    coexist): asking for 1.0.0+b1 must give 1.0.0+b1 or a refusal, never 1.0.0's files."""
    from adapterhub_sdk.oci.remote import OciRemote

    repo = f"oci://{oci.host}/{_repo(request)}"
    a, b, c = _open(tmp_path, "a"), _open(tmp_path, "b"), _open(tmp_path, "c")
    try:
        a.publish(lora_dir, name="acme/twin", version="1.0.0", base=base_dir)
        b.publish(lora_dir_b, name="acme/twin", version="1.0.0+b1", base=base_dir)
        OciRemote(insecure=True).push(a, "acme/twin@1.0.0", repo)
        with pytest.raises(AdapterHubError, match="is the same version as"):  # our push refuses the twin now
            OciRemote(insecure=True).push(b, "acme/twin@1.0.0+b1", repo)
        # another tool's push: the same artifact, written with the client itself
        from adapterhub_sdk.oci.artifact import artifact_manifest
        from adapterhub_sdk.oci.client import OciClient, sha256_digest
        from adapterhub_sdk.oci.refs import parse_oci_ref, version_tag

        m, target = b.show("acme/twin@1.0.0+b1").manifest, parse_oci_ref(repo)
        cfg = m.to_json()
        with OciClient(oci.host, insecure=True) as cl:
            OciRemote(insecure=True)._push_files(cl, target, b, m)
            cl.push_blob(target.repo, sha256_digest(cfg), len(cfg), cfg)
            cl.put_manifest(target.repo, version_tag(m.version), artifact_manifest(m, sha256_digest(cfg), len(cfg)))
        want = {"1.0.0+b1": b.show("acme/twin@1.0.0+b1").digest, "1.0.0": a.show("acme/twin@1.0.0").digest}
        for spec, version in (("1.0.0+b1", "1.0.0+b1"), ("1.0.0", "1.0.0"), ("latest", None)):
            fresh = _open(tmp_path, "fresh-" + spec.replace("+", "_"))
            try:
                got = OciRemote(insecure=True).pull(fresh, f"{repo}@{spec}")
            except AdapterHubError:
                continue  # refused: acceptable
            finally:
                fresh.close()
            assert got.version == (version or got.version) and got.digest == want[got.version], spec
        got = OciRemote(insecure=True).pull(c, f"{repo}@1.0.0+b1")
        assert (got.version, got.digest) == ("1.0.0+b1", want["1.0.0+b1"])
    finally:
        a.close(), b.close(), c.close()


@needs_oci
def test_resolve_does_not_trust_annotations_that_lie_about_the_base(oci, tmp_path, base_dir, base_other_shape,
                                                                   lora_dir, request):
    """An artifact whose annotations claim another base than its manifest (the config blob)
    pins is not reported as an exact fit for that base."""
    from adapterhub_sdk.oci.client import OciClient, sha256_digest
    from adapterhub_sdk.oci.remote import OciRemote

    repo = _repo(request)
    a = _open(tmp_path, "a")
    try:
        a.publish(lora_dir, name="acme/liar", version="1.0.0", base=base_dir)
        OciRemote(insecure=True).push(a, "acme/liar@1.0.0", f"oci://{oci.host}/{repo}")
        other = a._as_base(str(base_other_shape))
        with OciClient(oci.host, insecure=True) as c:
            doc = json.loads(c.get_manifest(repo, "1.0.0")[0])
            doc["annotations"]["io.adapterhub.base.fingerprint"] = other.digest
            doc["annotations"]["io.adapterhub.base.arch"] = other.arch_signature
            c.put_manifest(repo, "1.0.1", json.dumps(doc).encode())  # a tag of another version, too
            honest = c.get_manifest(repo, "1.0.0")[0]
            c.put_manifest(repo, "1.0.3", honest)  # 1.0.0's artifact under another version's tag
            junk = b'{"not": "a manifest"}'
            c.push_blob(repo, sha256_digest(junk), len(junk), junk)
            doc["config"].update(digest=sha256_digest(junk), size=len(junk))
            c.put_manifest(repo, "1.0.2", json.dumps(doc).encode())  # good annotations, no manifest behind
        remote = OciRemote(f"oci://{oci.host}/{repo}", insecure=True)
        hits = remote.resolve(other)
        assert all(h["verdict"] == "incompatible" for h in hits), hits
        mine = remote.resolve(a._as_base(str(base_dir)))
        assert [(h["version"], h["verdict"]) for h in mine] == [("1.0.0", "exact")], mine
    finally:
        a.close()


@needs_oci
def test_a_config_that_is_not_our_manifest_is_refused_with_nothing_recorded(oci, tmp_path, base_dir, lora_dir,
                                                                           request):
    from adapterhub_sdk.oci.client import OciClient, sha256_digest
    from adapterhub_sdk.oci.remote import OciRemote

    repo = _repo(request)
    a, c = _open(tmp_path, "a"), _open(tmp_path, "c")
    try:
        a.publish(lora_dir, name="acme/cfg", version="1.0.0", base=base_dir)
        OciRemote(insecure=True).push(a, "acme/cfg@1.0.0", f"oci://{oci.host}/{repo}")
        with OciClient(oci.host, insecure=True) as cl:
            doc = json.loads(cl.get_manifest(repo, "1.0.0")[0])
            for i, body in enumerate([b'{"hello": "world"}', b"\x80\x04pickle", b"[]" * 10]):
                cl.push_blob(repo, sha256_digest(body), len(body), body)
                doc["config"].update(digest=sha256_digest(body), size=len(body))
                cl.put_manifest(repo, f"bad{i}", json.dumps(doc).encode())
        for i in range(3):
            with pytest.raises(AdapterHubError):
                OciRemote(insecure=True).pull(c, f"oci://{oci.host}/{repo}:bad{i}", tmp_path / f"out{i}")
            assert not (tmp_path / f"out{i}").exists()
        assert c.list() == [] and list(c.blobs.iter_digests()) == []
    finally:
        a.close(), c.close()


@needs_oci
def test_a_huge_declared_size_is_refused_without_filling_the_disk(oci, tmp_path, base_dir, lora_dir, request):
    """A manifest (config and layer) that declares a file far larger than the bytes sent."""
    from adapterhub_sdk.oci.client import OciClient, sha256_digest
    from adapterhub_sdk.oci.remote import OciRemote

    repo = _repo(request)
    a, c = _open(tmp_path, "a"), _open(tmp_path, "c")
    try:
        a.publish(lora_dir, name="acme/huge", version="1.0.0", base=base_dir)
        OciRemote(insecure=True).push(a, "acme/huge@1.0.0", f"oci://{oci.host}/{repo}")
        with OciClient(oci.host, insecure=True) as cl:
            doc = json.loads(cl.get_manifest(repo, "1.0.0")[0])
            cfg = json.loads(cl.fetch_small(repo, doc["config"]["digest"], 1 << 20))
            cfg["files"][0]["size"] = 1 << 50
            cfg["version"] = "1.0.1"
            cfg.pop("digest")  # a consistent manifest that lies about the size
            body = json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()
            cl.push_blob(repo, sha256_digest(body), len(body), body)
            doc["config"].update(digest=sha256_digest(body), size=len(body))
            title = cfg["files"][0]["path"]
            for layer in doc["layers"]:
                if layer["annotations"]["org.opencontainers.image.title"] == title:
                    layer["size"] = 1 << 50
            try:
                cl.put_manifest(repo, "1.0.1", json.dumps(doc).encode())
            except AdapterHubError:
                pytest.skip("the registry itself refuses a layer size that differs from its blob's")
        with pytest.raises(IntegrityError, match=r"longer than|do not match|sent \d+ bytes for a blob of"):
            OciRemote(insecure=True).pull(c, f"oci://{oci.host}/{repo}:1.0.1")
        assert c.list() == [] and list(c.blobs.iter_digests()) == []
        tmp = tmp_path / "c-blobs" / "tmp"
        assert not tmp.exists() or list(tmp.iterdir()) == []
    finally:
        a.close(), c.close()


# ---------------------------------------------------------------------------- killed mid-pull


class _StallingProxy:
    """A reverse proxy to the registry on loopback that sends half of one blob's body, then
    stalls (so the client is caught mid-download) until closed."""

    def __init__(self, upstream: str, stall_digest: str):
        self.upstream, self.stall = upstream, stall_digest
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.host = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.stalled = threading.Event()
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        f = conn.makefile("rb")
        try:
            while True:
                line = f.readline()
                if not line:
                    return
                method, path, _ = line.decode().split(" ", 2)
                headers = {}
                while (h := f.readline()) not in (b"\r\n", b"\n", b""):
                    k, _, v = h.decode().partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = f.read(int(headers.get("content-length", 0) or 0))
                req = urllib.request.Request(f"http://{self.upstream}{path}", data=body or None, method=method,
                                             headers={k: v for k, v in headers.items() if k in ("accept",)})
                try:
                    resp = urllib.request.urlopen(req)  # noqa: S310 - loopback
                    status, rh, data = resp.status, resp.headers, resp.read()
                except urllib.error.HTTPError as e:
                    status, rh, data = e.code, e.headers, e.read()
                if method == "HEAD":
                    data_len = rh.get("content-length", "0")
                    out = b""
                else:
                    data_len, out = str(len(data)), data
                head = f"HTTP/1.1 {status} X\r\nContent-Length: {data_len}\r\n"
                for k in ("content-type", "docker-content-digest"):
                    if rh.get(k):
                        head += f"{k}: {rh.get(k)}\r\n"
                conn.sendall(head.encode() + b"\r\n")
                if self.stall in path and method == "GET" and "/blobs/" in path:
                    conn.sendall(out[:len(out) // 2])
                    self.stalled.set()
                    self.done.wait(120)
                    return
                conn.sendall(out)
        except (OSError, ValueError):
            return
        finally:
            conn.close()

    def close(self) -> None:
        self.done.set()
        self.sock.close()


def _check_clean(reg_url: str, blobs: Path, tmp_path: Path) -> None:
    """After a killed pull: nothing recorded, verify clean, the killed process's lease dead and
    gc --grace 0 frees whatever it stored; a second pull works."""
    r = ah.Registry.open(reg_url, blobs=blobs)
    try:
        assert r.list() == []
        assert r.verify().problems == []
        assert all(not lease["live"] for lease in r.leases())
        r.gc(grace_seconds=0)
        assert list(r.blobs.iter_digests()) == []
        assert r.leases() == []
        assert not (blobs / "tmp").exists() or list((blobs / "tmp").iterdir()) == []
    finally:
        r.close()


_PULL = """
import os, signal, sys
import adapterhub_sdk as ah
reg = ah.Registry.open(sys.argv[1], blobs=sys.argv[2])
when = sys.argv[4]
if when == "before-commit":
    from adapterhub_sdk.registry.publish import PublishPart
    def die(*a, **k):
        print("stored", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    PublishPart._commit_version = die
if when == "paused":
    import time
    from adapterhub_sdk.registry.publish import PublishPart
    commit = PublishPart._commit_version
    def wait(*a, **k):
        print("stored", flush=True)
        while not os.path.exists(sys.argv[5]):
            time.sleep(0.05)
        return commit(*a, **k)
    PublishPart._commit_version = wait
dest = None
if when == "mid-write":
    from adapterhub_sdk.blobs import BlobStore
    def half(self, digest, out, size):
        out.write(b"x" * 10)
        out.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    BlobStore.copy_fresh = half
    dest = sys.argv[5]
reg.pull(sys.argv[3], dest)
print("done", flush=True)
"""


@needs_oci
@pytest.mark.parametrize("when", ["mid-layer", "before-commit"])
def test_a_pull_killed_mid_way_leaves_nothing_half_written(oci, tmp_path, base_dir, lora_dir, request, when):
    from adapterhub_sdk.oci.remote import OciRemote

    repo = _repo(request) + when.replace("-", "")
    a = _open(tmp_path, "a")
    try:
        a.publish(lora_dir, name="acme/killed", version="1.0.0", base=base_dir)
        OciRemote(insecure=True).push(a, "acme/killed@1.0.0", f"oci://{oci.host}/{repo}")
        weights = next(f.sha256 for f in a.show("acme/killed@1.0.0").manifest.files
                       if f.path == "adapter_model.safetensors")
    finally:
        a.close()
    url, blobs = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "c-blobs"
    ah.Registry.open(url, blobs=blobs).close()
    proxy = _StallingProxy(oci.host, weights if when == "mid-layer" else "no-such-digest")
    env = {**os.environ, "ADAPTERHUB_OCI_INSECURE": "1"}
    try:
        proc = subprocess.Popen([sys.executable, "-c", _PULL, url, str(blobs), f"oci://{proxy.host}/{repo}:1.0.0",
                                 when], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if when == "mid-layer":
            assert proxy.stalled.wait(120), proc.communicate(timeout=5)
            time.sleep(0.2)
            proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, (out, err)
        if when == "before-commit":
            assert "stored" in out, err
            assert list(ah.Registry.open(url, blobs=blobs).blobs.iter_digests())  # blobs were in place
    finally:
        proxy.close()
    _check_clean(url, blobs, tmp_path)
    r = ah.Registry.open(url, blobs=blobs)
    try:
        got = OciRemote(insecure=True).pull(r, f"oci://{oci.host}/{repo}:1.0.0", tmp_path / "out")
        assert got.version == "1.0.0" and r.verify().problems == []
    finally:
        r.close()


def _forge(cl, repo: str, doc: dict, cfg: dict, tag: str, extra: dict[str, bytes] | None = None) -> None:
    """Push a consistent artifact whose config is ``cfg`` (its digest recomputed), with extra
    files added both to the config and as layers."""
    from adapterhub_sdk.oci.client import sha256_digest

    cfg = json.loads(json.dumps(cfg))
    doc = json.loads(json.dumps(doc))
    cfg.pop("digest", None)
    for name, raw in (extra or {}).items():
        cl.push_blob(repo, sha256_digest(raw), len(raw), raw)
        cfg["files"].append({"path": name, "sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)})
        doc["layers"].append({"mediaType": "application/vnd.adapterhub.adapter.file.v1", "digest": sha256_digest(raw),
                              "size": len(raw), "annotations": {"org.opencontainers.image.title": name}})
    body = json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()
    cl.push_blob(repo, sha256_digest(body), len(body), body)
    doc["config"].update(digest=sha256_digest(body), size=len(body))
    cl.put_manifest(repo, tag, json.dumps(doc).encode())


@needs_oci
def test_forged_names_and_reserved_file_names_in_an_artifact(oci, tmp_path, base_dir, lora_dir, request):
    """A config naming an invalid adapter, or listing a signature file (a forged model.sig in
    every directory pulled) or the manifest file a pull writes itself: refused, nothing
    recorded or written. (A listed manifest file was accepted, the pull's own written over it:
    the version's file records then named a file the directory never holds, and the vLLM
    plugin's intact check failed on every request.)"""
    from adapterhub_sdk.oci.client import OciClient
    from adapterhub_sdk.oci.remote import OciRemote

    repo = _repo(request)
    a, c = _open(tmp_path, "a"), _open(tmp_path, "c")
    try:
        a.publish(lora_dir, name="acme/forge", version="1.0.0", base=base_dir)
        OciRemote(insecure=True).push(a, "acme/forge@1.0.0", f"oci://{oci.host}/{repo}")
        with OciClient(oci.host, insecure=True) as cl:
            doc = json.loads(cl.get_manifest(repo, "1.0.0")[0])
            cfg = json.loads(cl.fetch_small(repo, doc["config"]["digest"], 1 << 20))
            _forge(cl, repo, doc, {**cfg, "name": "../../evil", "version": "2.0.0"}, "2.0.0")
            _forge(cl, repo, doc, {**cfg, "version": "3.0.0"}, "3.0.0",
                   {"adapterhub_manifest.json": b'{"schema": "forged"}'})
            _forge(cl, repo, doc, {**cfg, "version": "4.0.0"}, "4.0.0", {"model.sig": b'{"forged": true}'})
        with pytest.raises(AdapterHubError):
            OciRemote(insecure=True).pull(c, f"oci://{oci.host}/{repo}:2.0.0", tmp_path / "o2")
        assert not (tmp_path / "o2").exists() and c.list() == []
        with pytest.raises(IntegrityError, match="writes that file itself"):  # never listed by our publish
            OciRemote(insecure=True).pull(c, f"oci://{oci.host}/{repo}:4.0.0", tmp_path / "o4")
        assert not (tmp_path / "o4").exists() and c.list() == []
        with pytest.raises(IntegrityError, match="writes that file itself .its manifest"):
            OciRemote(insecure=True).pull(c, f"oci://{oci.host}/{repo}:3.0.0", tmp_path / "o3")
        assert not (tmp_path / "o3").exists() and c.list() == [] and list(c.blobs.iter_digests()) == []
    finally:
        a.close(), c.close()


def test_a_pulled_directory_published_again_pulls_into_a_directory_that_loads(tmp_path, base_dir, lora_dir):
    """The adapterhub_manifest.json that pull wrote is not packed as one of the new version's
    files (it was: every pull of that version then wrote its own manifest over it, and
    load_adapter refused the directory as changed since it was pulled)."""
    import transformers

    r = _open(tmp_path, "r")
    try:
        r.publish(lora_dir, name="acme/first", version="1.0.0", base=base_dir)
        r.pull("acme/first@1.0.0", tmp_path / "pulled")
        res = r.publish(tmp_path / "pulled", name="acme/again", version="1.0.0", base=base_dir)
        assert "adapterhub_manifest.json" not in [f.path for f in res.manifest.files]
        out = r.pull("acme/again@1.0.0", tmp_path / "again")
        model = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
        ah.load_adapter(model, out)
    finally:
        r.close()


@needs_oci
def test_a_tag_naming_another_version_is_refused_with_nothing_recorded(oci, tmp_path, base_dir, lora_dir, request):
    from adapterhub_sdk.oci.client import OciClient
    from adapterhub_sdk.oci.remote import OciRemote

    repo = _repo(request)
    a, c = _open(tmp_path, "a"), _open(tmp_path, "c")
    try:
        a.publish(lora_dir, name="acme/retag", version="1.0.0", base=base_dir)
        OciRemote(insecure=True).push(a, "acme/retag@1.0.0", f"oci://{oci.host}/{repo}")
        with OciClient(oci.host, insecure=True) as cl:
            body = cl.get_manifest(repo, "1.0.0")[0]
            cl.put_manifest(repo, "2.0.0", body)
            cl.put_manifest(repo, "2.0.0_b1", body)
        for ref in (":2.0.0", "@2.0.0", ":2.0.0_b1", "@2.0.0+b1"):
            with pytest.raises(AdapterHubError) as got:
                OciRemote(insecure=True).pull(c, f"oci://{oci.host}/{repo}{ref}", tmp_path / "out")
            assert "holds the manifest of version 1.0.0" in str(got.value) or ref == "@2.0.0"  # or: two tags
            assert not (tmp_path / "out").exists() and c.list() == []
        assert list(c.blobs.iter_digests()) == []
    finally:
        a.close(), c.close()


@needs_oci
def test_gc_grace_0_keeps_the_blobs_of_a_pull_in_flight(oci, tmp_path, base_dir, lora_dir, request):
    """A pull (a real process) that has stored every layer and not committed: a gc with no
    grace in another process keeps them (the pull's lease); the pull then commits, the version
    verifies, no lease is left, and a later gc keeps everything the version references."""
    from adapterhub_sdk.oci.remote import OciRemote

    from conftest import run_cli

    repo = _repo(request)
    a = _open(tmp_path, "a")
    try:
        a.publish(lora_dir, name="acme/inflight", version="1.0.0", base=base_dir)
        OciRemote(insecure=True).push(a, "acme/inflight@1.0.0", f"oci://{oci.host}/{repo}")
        n = len(a.show("acme/inflight@1.0.0").manifest.files)
    finally:
        a.close()
    url, blobs, go = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "c-blobs", tmp_path / "go"
    ah.Registry.open(url, blobs=blobs).close()
    proc = subprocess.Popen([sys.executable, "-c", _PULL, url, str(blobs), f"oci://{oci.host}/{repo}:1.0.0",
                             "paused", str(go)], env={**os.environ, "ADAPTERHUB_OCI_INSECURE": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "stored"
        r = ah.Registry.open(url, blobs=blobs)
        try:
            assert len(list(r.blobs.iter_digests())) == n and r.list() == []
        finally:
            r.close()
        got = run_cli("--registry", url, "--blobs", str(blobs), "gc", "--grace", "0", "--json", check=True)
        report = json.loads(got.stdout)
        assert (report["blobs_removed"], report["kept_leased"]) == (0, n), report
        go.touch()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and "done" in out, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    r = ah.Registry.open(url, blobs=blobs)
    try:
        assert r.verify().ok and r.leases() == [] and [i.version for i in r.versions("acme/inflight")] == ["1.0.0"]
        again = r.gc(grace_seconds=0)
        assert (again.blobs_removed, again.kept_leased) == (0, 0)
        assert r.verify().ok
    finally:
        r.close()


@needs_oci
def test_a_pull_killed_while_writing_its_directory_leaves_no_directory(oci, tmp_path, base_dir, lora_dir, request):
    """Killed in the middle of writing --out (the version is recorded by then): the
    destination does not exist, the version verifies, and pulling again to the same path
    writes it whole and clears what the killed writer left beside it."""
    from adapterhub_sdk.oci.remote import OciRemote

    repo = _repo(request)
    a = _open(tmp_path, "a")
    try:
        a.publish(lora_dir, name="acme/midwrite", version="1.0.0", base=base_dir)
        OciRemote(insecure=True).push(a, "acme/midwrite@1.0.0", f"oci://{oci.host}/{repo}")
        want = {p.name: p.read_bytes() for p in a.pull("acme/midwrite@1.0.0", tmp_path / "want").iterdir()}
    finally:
        a.close()
    url, blobs, dest = f"sqlite:///{tmp_path / 'c.db'}", tmp_path / "c-blobs", tmp_path / "out" / "adapter"
    dest.parent.mkdir()
    ah.Registry.open(url, blobs=blobs).close()
    proc = subprocess.run([sys.executable, "-c", _PULL, url, str(blobs), f"oci://{oci.host}/{repo}:1.0.0",
                           "mid-write", str(dest)], env={**os.environ, "ADAPTERHUB_OCI_INSECURE": "1"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not dest.exists()
    r = ah.Registry.open(url, blobs=blobs)
    try:
        assert r.verify().ok and [i.version for i in r.versions("acme/midwrite")] == ["1.0.0"]
        OciRemote(insecure=True).pull(r, f"oci://{oci.host}/{repo}:1.0.0", dest)
        assert {p.name: p.read_bytes() for p in dest.iterdir()} == want
        assert [p.name for p in dest.parent.iterdir()] == ["adapter"]
    finally:
        r.close()
