"""The bad-input catalogue: one test per hostile or broken input, each asserting the one-line
error (through the installed CLI where a process is cheap enough, else in Python with the
error's type and message) and that nothing was written or lost: every table of a registry
that already holds a version, and every file of its blob store, are the same afterwards.

Real inputs throughout: a real PEFT adapter altered on disk, real pickles whose
``__reduce__`` would write a marker file, real symbolic links, a real listening socket that
never answers, a real file-size limit (``RLIMIT_FSIZE``), a real PostgreSQL backend
terminated mid-publish. Other files test the happy paths of the same code
(test_package.py, test_names.py, test_links_nonfinite.py, test_faults.py).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sqlite3
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import adapterhub_sdk as ah
from adapterhub_sdk.errors import (
    AdapterFormatError,
    CorruptFileError,
    InvalidNameError,
    InvalidVersionError,
    RegistryError,
    UnsafeFormatError,
)
from adapterhub_sdk.manifest import Manifest

from conftest import run_cli

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
PREFIX = "base_model.model."


# --------------------------------------------------------------------------- helpers


@dataclass
class Seeded:
    """A SQLite registry under ADAPTERHUB_HOME that already holds ns/seed@1.0.0."""

    home: Path
    db: Path
    blobs: Path
    base: Path
    adapter: Path  # a fresh copy of a real PEFT adapter, for the test to damage

    def env(self) -> dict[str, str]:
        return {"ADAPTERHUB_HOME": str(self.home)}

    def state(self) -> tuple[Any, ...]:
        """Every row of every table, and every file of the blob store with its bytes' size."""
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
        try:
            names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
            rows = {n: sorted(map(repr, conn.execute(f'SELECT * FROM "{n}"'))) for n in names}
        finally:
            conn.close()
        files = sorted((str(p.relative_to(self.blobs)), p.stat().st_size)
                       for p in self.blobs.rglob("*") if p.is_file())
        return rows, files


@pytest.fixture
def seeded(tmp_path, base_dir, lora_dir, lora_dir_b) -> Seeded:
    home = Path(os.environ["ADAPTERHUB_HOME"])
    with ah.Registry.open() as reg:
        reg.publish(lora_dir_b, name="ns/seed", version="1.0.0", base=base_dir)
    adapter = Path(shutil.copytree(lora_dir, tmp_path / "adapter"))
    s = Seeded(home, home / "registry.db", home / "blobs", base_dir, adapter)
    assert s.state()[1], "the seed version stored no blobs"
    return s


def refused(seeded: Seeded, fn: Any, error: type[BaseException], match: str) -> BaseException:
    """``fn()`` raises ``error`` matching ``match`` and leaves the registry as it was."""
    before = seeded.state()
    with pytest.raises(error, match=match) as info:
        fn()
    assert seeded.state() == before
    return info.value


def one_line(proc: subprocess.CompletedProcess, code: int = 1) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def cli_refused(seeded: Seeded, *args: str, match: str, code: int = 1, env: dict | None = None) -> str:
    """``adapterhub ARGS`` fails with one line containing ``match``; the registry is unchanged."""
    before = seeded.state()
    line = one_line(run_cli(*args, env={**seeded.env(), **(env or {})}, timeout=120), code)
    assert match in line, line
    assert seeded.state() == before
    return line


def publish(seeded: Seeded, source: Path | None = None, *, name: str = "ns/bad", version: str = "1.0.0") -> Any:
    with ah.Registry.open() as reg:
        return reg.publish(source or seeded.adapter, name=name, version=version, base=seeded.base)


def write_header(path: Path, header: Any, data: bytes = b"", *, raw: bytes | None = None) -> Path:
    """A safetensors file with ``header`` (any JSON value, or ``raw`` header bytes) and ``data``."""
    h = raw if raw is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return path


def weights_header(seeded: Seeded) -> tuple[dict[str, Any], bytes]:
    """The adapter's real header (without __metadata__) and its data bytes."""
    raw = (seeded.adapter / WEIGHTS).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    return header, raw[8 + n:]


def damage_entry(seeded: Seeded, fields: Any) -> None:
    """Rewrite the adapter's weights with the first tensor's header entry changed by
    ``fields(entry)`` (the data bytes stay as they are)."""
    header, data = weights_header(seeded)
    name = sorted(header)[0]
    header[name] = {**header[name], **fields(header[name])}
    write_header(seeded.adapter / WEIGHTS, header, data)


class _Marker:
    """Unpickling this writes a marker file: proof that something ran the pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.write_text, (self.marker, "unpickled"))


def pickle_bomb(path: Path, marker: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump({PREFIX + "x.lora_A.weight": _Marker(marker)}, f, protocol=4)
    return path


# --------------------------------------------------------------------------- malformed safetensors


def test_safetensors_overlapping_byte_ranges(seeded):
    header, data = weights_header(seeded)
    a, b = sorted(header)[:2]
    header[b] = {**header[b], "data_offsets": header[a]["data_offsets"]}
    write_header(seeded.adapter / WEIGHTS, header, data)
    refused(seeded, lambda: publish(seeded), CorruptFileError, "overlap")


def test_safetensors_byte_range_not_matching_dtype_and_shape(seeded):
    damage_entry(seeded, lambda e: {"dtype": "F64"})
    refused(seeded, lambda: publish(seeded), CorruptFileError, r"spans \d+ bytes but F64")


def test_safetensors_duplicate_tensor_names(seeded):
    header, data = weights_header(seeded)
    name = sorted(header)[0]
    body = json.dumps(header)
    dup = json.dumps({name: header[name]})[1:-1]
    write_header(seeded.adapter / WEIGHTS, None, data, raw=(body[:-1] + ", " + dup + "}").encode())
    refused(seeded, lambda: publish(seeded), CorruptFileError, "twice")


def test_safetensors_huge_header_length(seeded):
    f = seeded.adapter / WEIGHTS
    f.write_bytes(struct.pack("<Q", 2**62) + b"{}" + b"\0" * 64)
    refused(seeded, lambda: publish(seeded), CorruptFileError, "header claims")


def test_safetensors_truncated_data(seeded):
    f = seeded.adapter / WEIGHTS
    f.write_bytes(f.read_bytes()[:-100])
    refused(seeded, lambda: publish(seeded), CorruptFileError, "truncated")


def test_safetensors_shorter_than_its_length_prefix(seeded):
    (seeded.adapter / WEIGHTS).write_bytes(b"\x01\x02\x03")
    refused(seeded, lambda: publish(seeded), CorruptFileError, "too short")


def test_safetensors_header_not_json(seeded):
    write_header(seeded.adapter / WEIGHTS, None, raw=b"{this is not json")
    refused(seeded, lambda: publish(seeded), CorruptFileError, "not valid JSON")


def test_safetensors_header_not_an_object(seeded):
    write_header(seeded.adapter / WEIGHTS, [1, 2, 3])
    refused(seeded, lambda: publish(seeded), CorruptFileError, "not a JSON object")


def test_safetensors_header_nested_100k_deep(seeded):
    write_header(seeded.adapter / WEIGHTS, None, raw=b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    refused(seeded, lambda: publish(seeded), CorruptFileError, "nests deeper")


def test_safetensors_unknown_dtype(seeded):
    damage_entry(seeded, lambda e: {"dtype": "Q3"})
    refused(seeded, lambda: publish(seeded), CorruptFileError, "unknown dtype")


def test_safetensors_negative_shape(seeded):
    damage_entry(seeded, lambda e: {"shape": [-4, 8]})
    refused(seeded, lambda: publish(seeded), CorruptFileError, "invalid shape")


def test_safetensors_reversed_data_offsets(seeded):
    damage_entry(seeded, lambda e: {"data_offsets": [e["data_offsets"][1], e["data_offsets"][0]]})
    refused(seeded, lambda: publish(seeded), CorruptFileError, "invalid data_offsets")


def test_cli_publish_of_malformed_safetensors_is_one_line(seeded):
    header, data = weights_header(seeded)
    a, b = sorted(header)[:2]
    header[b] = {**header[b], "data_offsets": header[a]["data_offsets"]}
    write_header(seeded.adapter / WEIGHTS, header, data)
    cli_refused(seeded, "publish", str(seeded.adapter), "--name", "ns/bad", "--version", "1.0.0",
                "--base", str(seeded.base), match="overlap")


# --------------------------------------------------------------------------- pickles


def test_pickle_as_adapter_model_bin_is_never_unpickled(seeded, tmp_path):
    marker = tmp_path / "UNPICKLED"
    (seeded.adapter / WEIGHTS).unlink()
    pickle_bomb(seeded.adapter / "adapter_model.bin", marker)
    cli_refused(seeded, "publish", str(seeded.adapter), "--name", "ns/bad", "--version", "1.0.0",
                "--base", str(seeded.base), match="pickle")
    assert not marker.exists()


def test_pickle_under_a_safetensors_name_is_never_unpickled(seeded, tmp_path):
    marker = tmp_path / "UNPICKLED"
    pickle_bomb(seeded.adapter / WEIGHTS, marker)
    refused(seeded, lambda: publish(seeded), UnsafeFormatError, "pickle")
    assert not marker.exists()


def test_pickle_beside_safetensors_is_refused_not_run(seeded, tmp_path):
    """A directory holding both: the pickle is refused by name, never opened."""
    marker = tmp_path / "UNPICKLED"
    pickle_bomb(seeded.adapter / "adapter_model.bin", marker)
    refused(seeded, lambda: publish(seeded), UnsafeFormatError, "adapter_model.bin")
    assert not marker.exists()


def test_pickle_as_base_weights_is_never_unpickled(seeded, tmp_path):
    marker = tmp_path / "UNPICKLED"
    base = Path(shutil.copytree(seeded.base, tmp_path / "base"))
    for f in base.glob("*.safetensors"):
        f.unlink()
    pickle_bomb(base / "pytorch_model.bin", marker)
    with ah.Registry.open() as reg:
        refused(seeded, lambda: reg.publish(seeded.adapter, name="ns/bad", version="1.0.0", base=base),
                UnsafeFormatError, "pickle")
    assert not marker.exists()


# --------------------------------------------------------------------------- adapter configs


def test_adapter_config_nested_100k_deep_is_a_format_error(seeded):
    """Was 'internal error (RecursionError)'."""
    cfg = json.loads((seeded.adapter / CONFIG).read_text())
    text = json.dumps(cfg)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    (seeded.adapter / CONFIG).write_text(text)
    cli_refused(seeded, "publish", str(seeded.adapter), "--name", "ns/bad", "--version", "1.0.0",
                "--base", str(seeded.base), match="deeper than 64 levels")


def test_adapter_config_not_json(seeded):
    (seeded.adapter / CONFIG).write_text("{peft_type: LORA")
    refused(seeded, lambda: publish(seeded), AdapterFormatError, "not valid JSON")


def test_adapter_config_without_peft_type(seeded):
    (seeded.adapter / CONFIG).write_text('{"r": 4}')
    refused(seeded, lambda: publish(seeded), AdapterFormatError, "peft_type")


def test_adapter_config_unknown_peft_type(seeded):
    cfg = json.loads((seeded.adapter / CONFIG).read_text())
    cfg["peft_type"] = "NOT_A_METHOD"
    (seeded.adapter / CONFIG).write_text(json.dumps(cfg))
    refused(seeded, lambda: publish(seeded), AdapterFormatError, "NOT_A_METHOD")


# --------------------------------------------------------------------------- symbolic links


def test_weights_file_that_is_a_link_outside_is_refused(seeded, tmp_path):
    outside = tmp_path / "outside.safetensors"
    shutil.move(seeded.adapter / WEIGHTS, outside)
    (seeded.adapter / WEIGHTS).symlink_to(outside)
    refused(seeded, lambda: publish(seeded), AdapterFormatError, "link")


def test_config_that_is_a_link_to_a_system_file_is_refused(seeded):
    (seeded.adapter / CONFIG).unlink()
    (seeded.adapter / CONFIG).symlink_to("/etc/passwd")
    refused(seeded, lambda: publish(seeded), AdapterFormatError, "link")


def test_cli_publish_of_a_dangling_link_is_one_line(seeded):
    (seeded.adapter / WEIGHTS).unlink()
    (seeded.adapter / WEIGHTS).symlink_to(seeded.adapter / "nowhere")
    cli_refused(seeded, "publish", str(seeded.adapter), "--name", "ns/bad", "--version", "1.0.0",
                "--base", str(seeded.base), match=WEIGHTS)


# --------------------------------------------------------------------------- hostile names and versions


@pytest.mark.parametrize("name", [
    pytest.param("../x", id="dot-dot"),
    pytest.param("a/b/c", id="three-parts"),
    pytest.param("ns/\u0430dapter", id="cyrillic-look-alike"),
    pytest.param("ns/" + "a" * 10_000, id="10k-chars"),
    pytest.param("ns/a\x00b", id="nul"),
    pytest.param("ns/a\nb", id="newline"),
    pytest.param("", id="empty"),
])
def test_hostile_adapter_name_is_refused(seeded, name):
    refused(seeded, lambda: publish(seeded, name=name), InvalidNameError, "name")


def test_cli_hostile_name_is_one_line_usage_error(seeded):
    line = cli_refused(seeded, "publish", str(seeded.adapter), "--name", "../../etc/x", "--version", "1.0.0",
                       "--base", str(seeded.base), match="../../etc/x", code=2)
    assert "name" in line


@pytest.mark.parametrize("version", ["1.0", "../1.0.0", "1.0.0\x00", "v" * 300, "1.0.0+", "01.0.0"])
def test_malformed_version_is_refused(seeded, version):
    refused(seeded, lambda: publish(seeded, version=version), InvalidVersionError, "version")


def test_republishing_an_existing_version_loses_nothing(seeded, lora_dir_b):
    from adapterhub_sdk.errors import VersionConflictError

    refused(seeded, lambda: publish(seeded, name="ns/seed"), VersionConflictError, "ns/seed@1.0.0")


@pytest.mark.parametrize("spec", ["ns/seed@>=>1", "ns/seed@1.0.0,,", "ns/seed@^", "ns/seed@" + "9" * 5000])
def test_cli_malformed_spec_in_show_is_one_line(seeded, spec):
    line = cli_refused(seeded, "show", spec, match="", code=2)
    assert "spec" in line or "version" in line, line


# --------------------------------------------------------------------------- hostile manifests


def _manifest_dict(seeded: Seeded) -> dict[str, Any]:
    with ah.Registry.open() as reg:
        out = reg.pull("ns/seed@1.0.0", seeded.home.parent / "pulled-seed")
    assert out is not None
    d = json.loads((out / "adapterhub_manifest.json").read_text())
    d.pop("digest", None)
    return d


@pytest.mark.parametrize("path", ["../escape.bin", "/etc/passwd", "sub/dir.json", ".hidden", "a\x00b"])
def test_manifest_file_path_that_leaves_the_directory_is_refused(seeded, path):
    d = _manifest_dict(seeded)
    d["files"][0]["path"] = path
    with pytest.raises(AdapterFormatError, match="not allowed"):
        Manifest.from_json(json.dumps(d))


def test_manifest_listing_one_file_twice_is_refused(seeded):
    d = _manifest_dict(seeded)
    d["files"].append(dict(d["files"][0]))
    with pytest.raises(AdapterFormatError, match="listed twice"):
        Manifest.from_json(json.dumps(d))


def test_manifest_nested_100k_deep_is_a_format_error(seeded):
    with pytest.raises(AdapterFormatError, match="deeper than 64"):
        Manifest.from_json('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")


def test_manifest_whose_digest_does_not_match_is_refused(seeded):
    d = _manifest_dict(seeded)
    d["digest"] = "sha256:" + "0" * 64
    with pytest.raises(AdapterFormatError, match="digest"):
        Manifest.from_json(json.dumps(d))


# --------------------------------------------------------------------------- unreachable registries


def test_unreachable_postgresql_registry_is_one_line(seeded, tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    cli_refused(seeded, "--registry", f"postgresql://postgres@127.0.0.1:{port}/x", "--blobs", str(tmp_path / "b"),
                "list", match="database error")
    assert not (tmp_path / "b").exists()


def test_unresponsive_postgresql_registry_is_one_line(seeded, tmp_path):
    from test_registry_faults import SILENT_SERVER

    proc = subprocess.Popen([sys.executable, "-c", SILENT_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        cli_refused(seeded, "--registry", f"postgresql://postgres@127.0.0.1:{port}/x?connect_timeout=2",
                    "--blobs", str(tmp_path / "b"), "list", match="did not answer")
    finally:
        proc.kill()
        proc.wait()


def test_registry_url_of_an_unsupported_scheme_is_one_line(seeded):
    cli_refused(seeded, "--registry", "mysql://root@localhost/x", "list", match="not supported", code=2)


def test_registry_file_that_is_not_a_database(seeded, tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    cli_refused(seeded, "--registry", f"sqlite:///{junk}", "list", match="database")
    assert junk.read_bytes() == b"this is not sqlite" * 100


def test_registry_database_of_another_application_is_not_migrated_into(seeded, tmp_path):
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers VALUES (1, 'x')")
    conn.commit()
    conn.close()
    cli_refused(seeded, "--registry", f"sqlite:///{other}", "list", match="no adapterhub schema")
    conn = sqlite3.connect(other)
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["customers"]
    conn.close()


def test_missing_base_directory_is_one_line(seeded, tmp_path):
    cli_refused(seeded, "publish", str(seeded.adapter), "--name", "ns/bad", "--version", "1.0.0",
                "--base", str(tmp_path / "no-such-base"), match="no-such-base", code=2)


def test_pull_to_a_destination_that_is_a_file_is_one_line(seeded, tmp_path):
    dest = tmp_path / "a-file"
    dest.write_text("keep me")
    cli_refused(seeded, "pull", "ns/seed@1.0.0", "--out", str(dest), match=str(dest))
    assert dest.read_text() == "keep me"


def test_unknown_adapter_is_one_line(seeded):
    cli_refused(seeded, "show", "ns/nope", match="ns/nope")



# --------------------------------------------------------------------------- read-only homes, full disks


def test_read_only_home_lists(seeded):
    from test_registry_faults import run_read_only

    before = seeded.state()
    proc = run_read_only(seeded.home, "list", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [v["name"] for v in json.loads(proc.stdout)] == ["ns/seed"]
    assert seeded.state() == before


def test_read_only_home_refuses_publish_in_one_line(seeded):
    from test_registry_faults import run_read_only

    before = seeded.state()
    line = one_line(run_read_only(seeded.home, "publish", str(seeded.adapter), "--name", "ns/bad", "--version",
                                  "1.0.0", "--base", str(seeded.base)))
    assert "read-only" in line, line
    assert seeded.state() == before


# Runs the CLI under a file-size limit (a disk that fills up): writes past it fail with EFBIG.
FSIZE_MAIN = r"""
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]),) * 2)
os.execv(sys.argv[2], sys.argv[2:])
"""


def test_full_disk_during_publish_is_one_line_and_loses_nothing(seeded):
    from conftest import ADAPTERHUB

    before = seeded.state()
    proc = subprocess.run([sys.executable, "-c", FSIZE_MAIN, "3000", ADAPTERHUB, "publish", str(seeded.adapter),
                           "--name", "ns/bad", "--version", "1.0.0", "--base", str(seeded.base)],
                          capture_output=True, text=True, env={**os.environ, **seeded.env()}, timeout=120)
    assert "could not be written" in one_line(proc)
    assert seeded.state() == before
    assert not list((seeded.blobs / "tmp").glob("*")) if (seeded.blobs / "tmp").is_dir() else True


# --------------------------------------------------------------------------- PostgreSQL connection lost


def test_postgresql_backend_terminated_mid_publish(tmp_path, base_dir, lora_dir, lora_dir_b):
    """pg_terminate_backend from another connection while the publish transaction inserts
    its version: one RegistryError, and the registry holds what it held before."""
    import sqlalchemy as sa

    from conftest import POSTGRES_URL, _pg_database, _pg_drop

    if not POSTGRES_URL:
        pytest.skip("PostgreSQL tests need ADAPTERHUB_TEST_POSTGRES_URL")
    url = _pg_database()
    admin = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT")
    try:
        with ah.Registry.open(url, blobs=tmp_path / "blobs") as reg:
            reg.publish(lora_dir_b, name="ns/seed", version="1.0.0", base=base_dir)

            def rows() -> list[Any]:
                with admin.connect() as c:
                    return sorted(map(tuple, c.execute(sa.text("SELECT name, version FROM adapters "
                                                               "JOIN versions ON versions.adapter_id = adapters.id"))))

            before = rows()
            killed = []

            # the version's rows go in through the catalog's statements on the connection's own
            # cursor (adapterhub_sdk/catalog.py): the backend is terminated just before that insert
            from adapterhub_sdk import catalog

            real = catalog.Sql._run

            def _kill(self, sql, params, many):  # noqa: ANN001
                if not killed and sql.lstrip().upper().startswith("INSERT INTO VERSIONS"):
                    pid = real(self, "SELECT pg_backend_pid()", (), False)[0][0][0]
                    with admin.connect() as c:
                        killed.append(c.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar())
                return real(self, sql, params, many)

            catalog.Sql._run = _kill
            try:
                with pytest.raises(RegistryError) as info:
                    reg.publish(lora_dir, name="ns/bad", version="1.0.0", base=base_dir)
            finally:
                catalog.Sql._run = real
            assert killed == [True]
            assert len(str(info.value).splitlines()) == 1
            assert rows() == before
            assert reg.publish(lora_dir, name="ns/bad", version="1.0.0", base=base_dir).manifest.version == "1.0.0"
    finally:
        admin.dispose()
        _pg_drop(url)
