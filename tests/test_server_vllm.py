"""vLLM's adapter endpoints as a vLLM client uses them: ``/v1/load_lora_adapter`` with a
registry spec or a PEFT directory on the server's disk, ``load_inplace``, ``/v1/unload_lora_adapter``,
and ``/v1/models`` cards with vLLM's fields plus the served digest and version.

A real uvicorn server on loopback serves a real deployment (test_server_api's tiny Llama with
its tokenizer, acme/a attached from a real SQLite registry); directories are written by PEFT
(``save_pretrained``) or by ``Registry.pull``."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest

from conftest import save_base, save_lora

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from test_row_isolation import _Serving  # noqa: E402 - the loopback server
from test_server_api import BASE_ID  # noqa: E402
from test_server_api import dep as tiny_dep  # noqa: E402, F401 - a fixture

ADMIN = {"Authorization": "Bearer admin-key"}
PROMPT = "w3 w4 w5"


@pytest.fixture(scope="module")
def dep(tiny_dep: Any) -> Any:  # noqa: F811 - the imported fixture, by name
    return tiny_dep


@pytest.fixture(scope="module")
def served(dep: Any) -> Any:
    from adapterhub_sdk.server import create_app

    app = create_app(dep, base_id=BASE_ID, batch_wait_ms=0, allow_adapter_updates=True, admin_key="admin-key")
    with _Serving(app) as s, httpx.Client(base_url=s.url, timeout=120, headers=ADMIN) as c:
        yield c


def _load(c: Any, name: str, path: Any, **extra: Any) -> Any:
    return c.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path), **extra})


def _error(r: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    if code is not None:
        assert err["code"] == code, err
    return err


def _text(c: Any, model: str) -> str:
    r = c.post("/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 6, "temperature": 0})
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["text"])


def _cards(c: Any) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in c.get("/v1/models").json()["data"]}


def test_a_plain_peft_directory_is_checked_by_shapes_and_served_unpinned(dep, served, tmp_path):
    lora = dep.base_path.parent / "lora"  # the directory acme/a@1.0.0 was published from
    before = set(dep.adapters)
    r = _load(served, "dir/a", lora)
    assert r.status_code == 200, r.text
    first, *rest = r.text.split("\n")
    assert first == "Success: LoRA adapter 'dir/a' added successfully."
    assert rest and "no base fingerprint" in rest[0] and rest[0].startswith("warning: ")
    assert r.headers["x-adapterhub-verdict"] == "structural" and r.headers["x-adapterhub-pinned"] == "false"
    card = _cards(served)["dir/a"]
    assert card["root"] == str(lora.resolve()) and card["parent"] == BASE_ID and card["version"] is None
    assert card["adapter"]["pinned"] is False and card["adapter"]["verdict"] == "structural"
    assert card["adapter"]["path"] == str(lora.resolve()) and card["max_model_len"] is not None
    assert card["permission"][0]["object"] == "model_permission"
    # the same files as acme/a@1.0.0: the same outputs, which differ from the base's
    assert _text(served, "dir/a") == _text(served, "acme/a") != _text(served, BASE_ID)
    # vLLM's rules: a name in use is a 400 unless load_inplace
    err = _error(_load(served, "dir/a", lora), 400, "invalid_value")
    assert err["param"] == "lora_name" and "load_inplace" in err["message"]
    assert served.post("/v1/unload_lora_adapter", json={"lora_name": "dir/a"}).text == \
        "Success: LoRA adapter 'dir/a' removed successfully."
    err = _error(served.post("/v1/unload_lora_adapter", json={"lora_name": "dir/a"}), 404, "model_not_found")
    assert err["message"] == "The lora adapter 'dir/a' cannot be found."
    assert set(dep.adapters) == before


def test_a_pulled_directory_is_pinned_and_load_inplace_replaces(dep, served, tmp_path):
    reg = dep.registry
    pulled = reg.pull("acme/b@1.0.0", tmp_path / "pulled")
    r = _load(served, "pinned", f"file://{pulled}")
    assert r.status_code == 200 and r.text == "Success: LoRA adapter 'pinned' added successfully.", r.text
    assert r.headers["x-adapterhub-verdict"] == "exact" and r.headers["x-adapterhub-pinned"] == "true"
    card = _cards(served)["pinned"]
    digest = reg.show("acme/b@1.0.0").digest
    assert card["version"] == "1.0.0" and card["digest"] == digest == r.headers["x-adapterhub-digest"]
    assert card["adapter"]["ref"] == "acme/b@1.0.0" and card["adapter"]["pinned"] is True
    other = save_lora(dep.base_path, tmp_path / "other_lora", seed=9)
    r = _load(served, "pinned", other, load_inplace=True)  # vLLM's in-place reload
    assert r.status_code == 200, r.text
    assert _cards(served)["pinned"]["digest"] != digest and _cards(served)["pinned"]["version"] is None
    assert served.post("/v1/unload_lora_adapter", json={"lora_name": "pinned"}).status_code == 200


def test_directories_that_must_not_be_served_are_refused_before_loading(dep, served, tmp_path):
    import torch
    from safetensors.torch import load_file, save_file

    before = set(dep.adapters)
    reg = dep.registry
    changed = reg.pull("acme/b@1.0.0", tmp_path / "changed")
    config = json.loads((changed / "adapter_config.json").read_text())
    config["lora_alpha"] = 999
    (changed / "adapter_config.json").write_text(json.dumps(config))
    err = _error(_load(served, "x", changed), 400, "integrity_error")
    assert "does not match the sha256" in err["message"] and err["param"] == "lora_path"

    wide = save_base(tmp_path / "wide", hidden=48)
    err = _error(_load(served, "x", save_lora(wide, tmp_path / "wide_lora", seed=1)), 400, "incompatible_adapter")
    assert "does not fit this base" in err["message"]

    nan = shutil.copytree(dep.base_path.parent / "lora", tmp_path / "nan")
    tensors = load_file(nan / "adapter_model.safetensors")
    key = sorted(tensors)[0]
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, nan / "adapter_model.safetensors")
    err = _error(_load(served, "x", nan), 400)
    assert "non-finite" in err["message"]

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(dep.base_path.parent / "lora" / "adapter_config.json", pickled)
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    err = _error(_load(served, "x", pickled), 400)
    assert "pickle" in err["message"].lower()

    _error(_load(served, "x", tmp_path / "missing"), 404, "not_found")
    _error(served.post("/v1/load_lora_adapter", json={"lora_name": "x"}), 400)  # no lora_path
    _error(served.post("/v1/load_lora_adapter", json={"lora_path": str(nan)}), 400)  # no lora_name
    assert set(dep.adapters) == before and "x" not in _cards(served)


def test_a_signed_only_policy_needs_a_trusted_model_sig_in_the_directory(base_dir, lora_dir, tmp_path):
    import adapterhub_sdk as ah
    from adapterhub_sdk.server import create_app
    from adapterhub_sdk.signing import generate_key

    with ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=tmp_path / "blobs") as reg:
        reg.publish(lora_dir, name="acme/s", version="1.0.0", base=base_dir)
        reg.trust_key("alice", generate_key("alice").public_pem)
        unsigned = reg.pull("acme/s@1.0.0", tmp_path / "unsigned")
        reg.sign("acme/s@1.0.0", key="alice")
        signed = reg.pull("acme/s@1.0.0", tmp_path / "signed")
        dep = ah.Deployment(base_dir, registry=reg, require_signed="alice")
        app = create_app(dep, base_id="tiny", batch_wait_ms=0, allow_adapter_updates=True, admin_key="admin-key")
        with _Serving(app) as s, httpx.Client(base_url=s.url, timeout=120, headers=ADMIN) as c:
            for path in (unsigned, lora_dir):
                err = _error(_load(c, "s", path), 403, "signature_required")
                assert "alice" in err["message"]
            assert dep.adapters == {}
            r = _load(c, "s", signed)
            assert r.status_code == 200 and r.headers["x-adapterhub-verdict"] == "exact", r.text
            assert _cards(c)["s"]["version"] == "1.0.0"
        # a directory changed after its signature was checked, before it was copied: what is
        # loaded is compared with what the trusted signature lists
        from adapterhub_sdk.deploy_dir import _same_as_signed
        from adapterhub_sdk.errors import IntegrityError
        from adapterhub_sdk.package import pack

        checked = reg.check_signed_directory(signed, "alice")
        with pack(signed) as pkg:
            _same_as_signed(pkg, checked, str(signed))  # unchanged: accepted
        (signed / "README.md").write_text("changed after the check\n")
        with pack(signed) as pkg, pytest.raises(IntegrityError, match="changed while it was being loaded"):
            _same_as_signed(pkg, checked, str(signed))

