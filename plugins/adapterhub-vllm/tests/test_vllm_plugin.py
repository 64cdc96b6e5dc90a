"""adapterhub-vllm without a GPU: the ``vllm`` runtime backend and its limits, LoRARequest
arguments from registry specs (verified pull into a digest-keyed cache, fingerprint
refusal), and the LoRA resolver with vLLM absent, with a stand-in vLLM, and with the real
one when it is importable. What needs a GPU is listed in the plugin's README.

The fixtures live in this module, not in a conftest.py: the adapterhub_sdk suite, collected
in the same pytest run, imports helpers with ``from conftest import ...``, and a second
top-level ``conftest`` module would take that name."""

from __future__ import annotations

import abc
import asyncio
import hashlib
import importlib
import json
import logging
import sys
import types
from pathlib import Path

import pytest

import adapterhub_sdk as ah
from adapterhub_sdk.plugins import get_plugin_manager, register_plugin, unregister_plugin

try:
    import adapterhub_vllm
except ImportError:  # a checkout without `pip install -e plugins/adapterhub-vllm`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import adapterhub_vllm

from adapterhub_vllm import (  # noqa: E402
    VLLM_LIMITS,
    VllmRuntime,
    lora_int_id_for,
    prepare_lora,
    served_fingerprint,
)
from adapterhub_vllm import resolver as resolver_mod  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_NAME = "adapterhub-vllm"


# --------------------------------------------------------------------------- fixtures


def _tiny_llama(seed: int, hidden: int = 32):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=64, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def _lora(base: Path, out: Path, *, seed: int, r: int = 4, **kw) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"], **kw))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.save_pretrained(out)
    return out


@pytest.fixture(autouse=True)
def _vllm_isolated(tmp_path, monkeypatch):
    """Own ADAPTERHUB_HOME; no entry-point plugins should the plugin manager first load in this
    process (the plugin comes in through ``vllm_plugin`` only, so nothing stays registered);
    none of the resolver's settings inherited from the environment."""
    monkeypatch.setenv("ADAPTERHUB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ADAPTERHUB_LOAD_PLUGINS", "")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("ADAPTERHUB_REGISTRY_URL", "ADAPTERHUB_BLOBS", "ADAPTERHUB_VLLM_BASE_FINGERPRINT",
                "ADAPTERHUB_VLLM_CACHE_DIR", "ADAPTERHUB_VLLM_MAX_LORA_RANK", "ADAPTERHUB_VLLM_FOLLOW_INTERVAL",
                "ADAPTERHUB_VLLM_SERVER_URL", "VLLM_API_KEY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def vllm_plugin():
    """The plugin module registered in this process for one test (unless its entry point
    already loaded it, in which case that registration is used and kept)."""
    if get_plugin_manager().is_registered(adapterhub_vllm):
        yield adapterhub_vllm
        return
    register_plugin(adapterhub_vllm, name=PLUGIN_NAME)
    try:
        yield adapterhub_vllm
    finally:
        unregister_plugin(adapterhub_vllm)


@pytest.fixture(scope="session")
def vmodels(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("vllm-models")


@pytest.fixture(scope="session")
def vbase(vmodels) -> Path:
    """The served model: a small Llama (seed 0)."""
    path = vmodels / "base"
    _tiny_llama(0).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def vbase_other(vmodels) -> Path:
    """Same architecture, other weights (seed 1): a different fingerprint."""
    path = vmodels / "base_other"
    _tiny_llama(1).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def vlora(vmodels, vbase) -> Path:
    return _lora(vbase, vmodels / "lora", seed=1)


@pytest.fixture(scope="session")
def vdora(vmodels, vbase) -> Path:
    return _lora(vbase, vmodels / "dora", seed=2, use_dora=True)


@pytest.fixture(scope="session")
def vpattern(vmodels, vbase) -> Path:
    """A LoRA whose v_proj has its own rank and alpha (PEFT's rank_pattern / alpha_pattern)."""
    return _lora(vbase, vmodels / "pattern", seed=3, rank_pattern={"v_proj": 2}, alpha_pattern={"v_proj": 3})


@pytest.fixture(scope="session")
def vtokens(vmodels, vbase) -> Path:
    """A LoRA that also trains two embedding rows (PEFT's trainable_token_indices)."""
    return _lora(vbase, vmodels / "tokens", seed=4, trainable_token_indices=[1, 2])


@pytest.fixture
def vregistry(tmp_path, vbase, vbase_other, vlora, vdora):
    """A SQLite registry: acme/sentiment 1.0.0 and 1.1.0 (pinned to vbase), acme/other
    (pinned to vbase_other), acme/dora (pinned to vbase), acme/unpinned (no fingerprint)."""
    reg = ah.Registry.open(f"sqlite:///{tmp_path / 'reg' / 'registry.db'}")
    reg.publish(vlora, name="acme/sentiment", version="1.0.0", base=vbase)
    reg.publish(vlora, name="acme/sentiment", version="1.1.0", base=vbase, description="newer")
    reg.publish(vlora, name="acme/other", version="1.0.0", base=vbase_other)
    reg.publish(vdora, name="acme/dora", version="1.0.0", base=vbase)
    reg.publish(vlora, name="acme/unpinned", version="1.0.0")
    try:
        yield reg
    finally:
        reg.close()


# --------------------------------------------------------------------------- helpers


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _request_type() -> type:
    """What ``resolve_lora`` answers here: vLLM's ``LoRARequest`` when vLLM is importable,
    the plugin's ``LoRAArgs`` otherwise."""
    if resolver_mod.vllm_available():
        from vllm.lora.request import LoRARequest

        return LoRARequest
    return adapterhub_vllm.LoRAArgs


def _pulled_version(answer) -> str:
    """``name@version`` of the directory a resolver answer points vLLM at, read from the
    manifest pulled beside the weights (the same with and without vLLM)."""
    manifest = json.loads(Path(answer.lora_path, "adapterhub_manifest.json").read_text())
    return f"{manifest['name']}@{manifest['version']}"


# --------------------------------------------------------------------------- runtime backend


def test_runtime_is_registered_through_the_hook(vllm_plugin):
    from adapterhub_sdk.runtime import get_runtime, runtimes

    assert "vllm" in runtimes()
    backend = get_runtime("vllm")
    assert isinstance(backend, VllmRuntime)
    lim = backend.limits.to_dict()
    assert lim["methods"] == ["lora"] and lim["unsupported_variants"] == ["dora"]
    assert lim["max_rank"] == 512 and lim["devices"] == ["cuda"]


def test_runtime_check():
    rt = VllmRuntime()
    assert rt.check("lora", "lora", {"rank": 16}) == []
    assert rt.check("lora", "rslora", {"rank": 512}) == []
    assert any("dora" in r for r in rt.check("lora", "dora", {"rank": 8}))
    assert any("does not run ia3" in r for r in rt.check("ia3", "ia3", {}))
    assert any("rank <= 512" in r for r in rt.check("lora", "lora", {"rank": 1024}))
    assert any("modules_to_save" in r for r in rt.check("lora", "lora", {"modules_to_save": ["lm_head"]}))
    assert rt.check("lora", "lora", {"modules_to_save": ["score"]}) == []
    assert VLLM_LIMITS.devices == ("cuda",)


@pytest.mark.parametrize("config", [{"lora_bias": True}, {"alora_invocation_tokens": [3]},
                                    {"kasa_config": {"r": 2}}, {"init_lora_weights": "pissa"}])
def test_runtime_check_reads_the_config_as_the_resolver_does(config):
    # resolve --runtime vllm must not call compatible what the resolver (vllm_limitations) refuses
    rt = VllmRuntime()
    method = {"type": "lora", "variant": "lora", "summary": {"rank": 8}, "config": {"r": 8, **config}}
    assert rt.check("lora", "lora", {"rank": 8}) == []  # the summary alone shows nothing
    assert rt.check_method(method)
    assert rt.check_method({**method, "config": {"r": 8}}) == []


def test_resolve_with_runtime_vllm_marks_dora_incompatible(vllm_plugin, vregistry, vbase):
    hits = {h.name: h for h in vregistry.resolve(vbase, runtime="vllm", include_incompatible=True)}
    assert hits["acme/sentiment"].verdict == "exact"
    assert hits["acme/dora"].verdict == "incompatible"
    assert any("dora" in r for r in hits["acme/dora"].reasons)
    kept = [h.name for h in vregistry.resolve(vbase, runtime="vllm")]
    assert "acme/dora" not in kept and "acme/sentiment" in kept


# --------------------------------------------------------------------------- LoRARequest arguments


def test_prepare_lora_pulls_verified_into_a_digest_keyed_cache(vregistry, vbase, vlora, tmp_path):
    cache = tmp_path / "cache"
    args = prepare_lora("acme/sentiment@^1", registry=vregistry, served_model=vbase, cache_dir=cache)
    info = vregistry.show("acme/sentiment@1.1.0")
    assert args.adapter == "acme/sentiment@1.1.0" and args.digest == info.digest
    assert args.lora_name == "acme/sentiment@^1"  # the name vLLM is asked for
    assert args.lora_int_id == lora_int_id_for(info.digest) and 1 <= args.lora_int_id < 2**31
    path = Path(args.lora_path)
    assert path == cache / info.digest.split(":", 1)[1]
    for f in vlora.iterdir():
        if f.is_file():
            assert _sha(path / f.name) == _sha(f)
    assert json.loads((path / "adapterhub_manifest.json").read_text())["version"] == "1.1.0"
    assert args.base_fingerprint == ah.fingerprint(vbase).digest
    assert args.kwargs() == {"lora_name": "acme/sentiment@^1", "lora_int_id": args.lora_int_id,
                             "lora_path": str(path)}


def test_prepare_lora_reuses_an_intact_cache_and_repairs_a_damaged_one(vregistry, vbase, tmp_path):
    cache = tmp_path / "cache"
    first = prepare_lora("acme/sentiment@1.0.0", registry=vregistry, served_model=vbase, cache_dir=cache)
    weights = Path(first.lora_path) / "adapter_model.safetensors"
    good = weights.read_bytes()
    inode = weights.stat().st_ino
    again = prepare_lora("acme/sentiment@1.0.0", registry=vregistry, served_model=vbase, cache_dir=cache)
    assert again.lora_path == first.lora_path and weights.stat().st_ino == inode  # not rewritten
    weights.chmod(0o644)
    damaged = bytearray(good)
    damaged[-1] ^= 0xFF
    weights.write_bytes(bytes(damaged))
    repaired = prepare_lora("acme/sentiment@1.0.0", registry=vregistry, served_model=vbase, cache_dir=cache)
    assert Path(repaired.lora_path, "adapter_model.safetensors").read_bytes() == good


def test_prepare_lora_with_explicit_name_and_id(vregistry, vbase, tmp_path):
    fp = ah.fingerprint(vbase).digest
    args = prepare_lora("acme/sentiment", registry=vregistry, base_fingerprint=fp, cache_dir=tmp_path / "c",
                        lora_name="sentiment", lora_int_id=7)
    assert (args.lora_name, args.lora_int_id) == ("sentiment", 7)
    with pytest.raises(ValueError, match="must be > 0"):
        prepare_lora("acme/sentiment", registry=vregistry, base_fingerprint=fp, cache_dir=tmp_path / "c",
                     lora_int_id=0)


def test_a_mismatched_base_is_refused_before_anything_is_pulled(vregistry, vbase, vbase_other, tmp_path):
    cache = tmp_path / "cache"
    served = ah.fingerprint(vbase).digest
    pinned = ah.fingerprint(vbase_other).digest
    with pytest.raises(ah.IncompatibleAdapterError) as exc:
        prepare_lora("acme/other", registry=vregistry, served_model=vbase, cache_dir=cache)
    msg = str(exc.value)
    assert "acme/other@1.0.0 refused for vLLM" in msg
    assert f"pinned to base {pinned[:12]}" in msg and f"fingerprint {served[:12]}" in msg
    assert not cache.exists() or not any(cache.iterdir())
    # the same adapter is accepted where its own base is served
    ok = prepare_lora("acme/other", registry=vregistry, served_model=vbase_other, cache_dir=cache)
    assert ok.base_fingerprint == pinned


def test_a_configured_fingerprint_is_used_instead_of_the_model(vregistry, vbase, vbase_other, tmp_path):
    fp = ah.fingerprint(vbase).digest
    args = prepare_lora("acme/sentiment", registry=vregistry, served_model="org/not-downloaded",
                        base_fingerprint=fp.upper(), cache_dir=tmp_path / "c")
    assert args.base_fingerprint == fp
    with pytest.raises(ah.IncompatibleAdapterError, match="pinned to base"):
        prepare_lora("acme/sentiment", registry=vregistry, base_fingerprint=ah.fingerprint(vbase_other).digest,
                     cache_dir=tmp_path / "c")
    with pytest.raises(ah.AdapterHubError, match="not a base fingerprint"):
        prepare_lora("acme/sentiment", registry=vregistry, base_fingerprint="abc123", cache_dir=tmp_path / "c")


def test_an_unknown_served_model_is_refused_with_the_fix(vregistry, tmp_path):
    with pytest.raises(ah.AdapterHubError, match="fingerprint is unknown") as exc:
        prepare_lora("acme/sentiment", registry=vregistry, served_model="org/not-downloaded",
                     cache_dir=tmp_path / "c")
    assert "ADAPTERHUB_VLLM_BASE_FINGERPRINT" in exc.value.hint


def test_dora_and_unpinned_adapters_are_refused(vregistry, vbase, tmp_path):
    with pytest.raises(ah.IncompatibleAdapterError, match="vLLM does not support DoRA"):
        prepare_lora("acme/dora", registry=vregistry, served_model=vbase, cache_dir=tmp_path / "c")
    with pytest.raises(ah.IncompatibleAdapterError, match="without a base fingerprint"):
        prepare_lora("acme/unpinned", registry=vregistry, served_model=vbase, cache_dir=tmp_path / "c")


def test_max_lora_rank_refusal(vregistry, vbase, tmp_path):
    from adapterhub_vllm.lora import refusal_reasons

    manifest = vregistry.show("acme/sentiment").manifest
    fp = ah.fingerprint(vbase).digest
    assert refusal_reasons(manifest, fp, max_lora_rank=8) == []
    assert refusal_reasons(manifest, fp, max_lora_rank=1) == ["its rank 4 is above the server's --max-lora-rank 1"]


def test_unknown_specs_raise_not_found(vregistry, vbase, tmp_path):
    with pytest.raises(ah.NotFoundError):
        prepare_lora("acme/missing", registry=vregistry, served_model=vbase, cache_dir=tmp_path / "c")
    with pytest.raises(ah.NotFoundError):
        prepare_lora("acme/sentiment@^9", registry=vregistry, served_model=vbase, cache_dir=tmp_path / "c")


def test_prepare_lora_opens_the_registry_the_environment_names(vregistry, vbase, tmp_path, monkeypatch):
    monkeypatch.setenv("ADAPTERHUB_REGISTRY_URL", vregistry.url)
    monkeypatch.setenv("ADAPTERHUB_BLOBS", str(vregistry.blobs))
    monkeypatch.setenv("ADAPTERHUB_VLLM_CACHE_DIR", str(tmp_path / "envcache"))
    args = prepare_lora("acme/sentiment@1.0.0", served_model=vbase)
    assert Path(args.lora_path).parent == tmp_path / "envcache"


def test_runtime_helper_delegates(vregistry, vbase, tmp_path):
    args = VllmRuntime().lora_request_args("acme/sentiment", registry=vregistry, served_model=vbase,
                                           cache_dir=tmp_path / "c")
    assert args.adapter == "acme/sentiment@1.1.0"


def test_served_fingerprint_of_a_directory(vbase):
    assert served_fingerprint(vbase) == ah.fingerprint(vbase).digest
    with pytest.raises(ah.AdapterHubError, match="fingerprint is unknown"):
        served_fingerprint(None)


# --------------------------------------------------------------------------- resolver


def _resolver(vregistry, tmp_path, **kw):
    return resolver_mod.AdapterHubLoRAResolver(registry=vregistry, cache_dir=tmp_path / "cache", **kw)


@pytest.mark.skipif(resolver_mod.vllm_available(), reason="vLLM is importable here: the plain-class "
                                                           "fallback is not in use")
def test_resolver_without_vllm_is_a_plain_class_returning_args(vregistry, vbase, tmp_path):
    assert resolver_mod.AdapterHubLoRAResolver.__mro__[1:] == (object,)
    res = _resolver(vregistry, tmp_path)
    got = asyncio.run(res.resolve_lora(str(vbase), "acme/sentiment@^1"))
    assert (got.lora_name, got.adapter) == ("acme/sentiment@^1", "acme/sentiment@1.1.0")
    assert Path(got.lora_path, "adapter_model.safetensors").is_file() and got.lora_int_id > 0
    resolver_mod.register_resolver()  # no vLLM: logs and returns, never raises


def test_resolver_returns_none_for_names_it_does_not_own(vregistry, vbase, tmp_path, caplog):
    res = _resolver(vregistry, tmp_path)
    for name in ("my-local-lora", "acme/missing", "acme/sentiment@^9", "not a name"):
        assert asyncio.run(res.resolve_lora(str(vbase), name)) is None
    assert res.refusals == {}  # not ours is not a refusal


def test_signed_only_policy_refuses_an_unsigned_adapter_even_when_cached(vregistry, vbase, tmp_path, monkeypatch):
    from adapterhub_sdk.signing import generate_key

    prepare_lora("acme/sentiment@1.0.0", registry=vregistry, served_model=vbase, cache_dir=tmp_path / "cache")
    vregistry.trust_key("alice", generate_key("alice").public_pem)
    monkeypatch.setenv("ADAPTERHUB_REQUIRE_SIGNED", "alice")
    res = _resolver(vregistry, tmp_path)
    assert asyncio.run(res.resolve_lora(str(vbase), "acme/sentiment@1.0.0")) is None
    assert "requires a signature by alice, and it is unsigned" in res.refusals["acme/sentiment@1.0.0"]
    vregistry.sign("acme/sentiment@1.0.0", key="alice")
    assert asyncio.run(res.resolve_lora(str(vbase), "acme/sentiment@1.0.0")) is not None


def test_resolver_refuses_a_mismatched_adapter_with_the_reason(vregistry, vbase, tmp_path, caplog):
    res = _resolver(vregistry, tmp_path)
    with caplog.at_level(logging.WARNING, logger="adapterhub_vllm"):
        assert asyncio.run(res.resolve_lora(str(vbase), "acme/other")) is None
        assert asyncio.run(res.resolve_lora(str(vbase), "acme/dora")) is None
    assert "pinned to base" in res.refusals["acme/other"]
    assert "DoRA" in res.refusals["acme/dora"]
    assert "LoRA 'acme/other' not loaded" in caplog.text
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_resolver_refuses_everything_when_the_served_model_is_unknown(vregistry, tmp_path):
    res = _resolver(vregistry, tmp_path)
    assert asyncio.run(res.resolve_lora("org/not-downloaded", "acme/sentiment")) is None
    assert "ADAPTERHUB_VLLM_BASE_FINGERPRINT" in res.refusals["acme/sentiment"]


def test_resolver_with_a_configured_fingerprint(vregistry, vbase, tmp_path):
    res = _resolver(vregistry, tmp_path, base_fingerprint=ah.fingerprint(vbase).digest)
    got = asyncio.run(res.resolve_lora("org/served-by-hub-id", "acme/sentiment@1.0.0"))
    # a LoRARequest with vLLM, LoRAArgs without: neither is assumed, both are checked
    assert isinstance(got, _request_type()), type(got)
    assert got.lora_name == "acme/sentiment@1.0.0" and got.lora_int_id > 0
    assert _pulled_version(got) == "acme/sentiment@1.0.0"
    # the configured fingerprint is the one checked: other weights' adapters stay refused
    assert asyncio.run(res.resolve_lora("org/served-by-hub-id", "acme/other")) is None
    assert "pinned to base" in res.refusals["acme/other"]


def test_resolver_from_env(vregistry, vbase, tmp_path, monkeypatch):
    fp = ah.fingerprint(vbase).digest
    monkeypatch.setenv("ADAPTERHUB_REGISTRY_URL", vregistry.url)
    monkeypatch.setenv("ADAPTERHUB_BLOBS", str(vregistry.blobs))
    monkeypatch.setenv("ADAPTERHUB_VLLM_BASE_FINGERPRINT", fp)
    monkeypatch.setenv("ADAPTERHUB_VLLM_CACHE_DIR", str(tmp_path / "envcache"))
    monkeypatch.setenv("ADAPTERHUB_VLLM_MAX_LORA_RANK", "16")
    res = resolver_mod.AdapterHubLoRAResolver.from_env()
    assert (res.base_fingerprint, res.max_lora_rank, res.cache_dir) == (fp, 16, tmp_path / "envcache")
    got = asyncio.run(res.resolve_lora("whatever", "acme/sentiment"))
    assert isinstance(got, _request_type()) and _pulled_version(got) == "acme/sentiment@1.1.0"
    assert Path(got.lora_path).parent == tmp_path / "envcache"
    monkeypatch.setenv("ADAPTERHUB_VLLM_BASE_FINGERPRINT", "nope")
    with pytest.raises(ValueError, match="ADAPTERHUB_VLLM_BASE_FINGERPRINT"):
        resolver_mod.AdapterHubLoRAResolver.from_env()


# --------------------------------------------------------------------------- with a stand-in vLLM


def _fake_vllm() -> dict[str, types.ModuleType]:
    """Modules with the shape of vLLM's vllm.lora.resolver / vllm.lora.request (as in vLLM 0.33)."""
    request = types.ModuleType("vllm.lora.request")

    class LoRARequest:
        def __init__(self, lora_name, lora_int_id, lora_path="", base_model_name=None):
            if lora_int_id < 1:
                raise ValueError(f"id must be > 0, got {lora_int_id}")
            assert lora_path, "lora_path cannot be empty"
            self.lora_name, self.lora_int_id, self.lora_path = lora_name, lora_int_id, lora_path
            self.base_model_name = base_model_name

    request.LoRARequest = LoRARequest
    resolver = types.ModuleType("vllm.lora.resolver")

    class LoRAResolver(abc.ABC):
        @abc.abstractmethod
        async def resolve_lora(self, base_model_name, lora_name): ...

    class _Registry:
        def __init__(self):
            self.resolvers = {}

        def register_resolver(self, name, resolver):
            self.resolvers[name] = resolver

        def get_supported_resolvers(self):
            return self.resolvers.keys()

        def get_resolver(self, name):
            return self.resolvers[name]

    resolver.LoRAResolver = LoRAResolver
    resolver.LoRAResolverRegistry = _Registry()
    peft_helper = types.ModuleType("vllm.lora.peft_helper")

    class PEFTHelper:
        def get_rank_and_scaling(self, module_name):  # vLLM 0.33: rank_pattern/alpha_pattern per module
            raise NotImplementedError

    peft_helper.PEFTHelper = PEFTHelper
    vllm, lora = types.ModuleType("vllm"), types.ModuleType("vllm.lora")
    vllm.__version__ = "0.33.0"
    vllm.lora, lora.request, lora.resolver, lora.peft_helper = lora, request, resolver, peft_helper
    return {"vllm": vllm, "vllm.lora": lora, "vllm.lora.request": request, "vllm.lora.resolver": resolver,
            "vllm.lora.peft_helper": peft_helper}


@pytest.fixture
def fake_vllm():
    """adapterhub_vllm.resolver re-imported against a stand-in vLLM, restored afterwards."""
    fakes = _fake_vllm()
    saved = {k: sys.modules.get(k) for k in fakes}
    sys.modules.update(fakes)
    try:
        yield importlib.reload(resolver_mod), fakes
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
        importlib.reload(resolver_mod)


async def _vllm_like_resolve(resolvers, base_model_name, lora_name, counter=[0]):  # noqa: B006
    """What vLLM's OpenAIServingModels.resolve_lora does with each resolver's answer."""
    for r in resolvers:
        req = await r.resolve_lora(base_model_name, lora_name)
        if req is not None:
            counter[0] += 1
            req.lora_int_id = counter[0]  # vLLM assigns its own id
            return req
    return None


def test_resolver_subclasses_vllms_lora_resolver(fake_vllm, vregistry, vbase, tmp_path):
    mod, fakes = fake_vllm
    base_cls = fakes["vllm.lora.resolver"].LoRAResolver
    assert mod.vllm_available() and issubclass(mod.AdapterHubLoRAResolver, base_cls)
    res = mod.AdapterHubLoRAResolver(registry=vregistry, cache_dir=tmp_path / "cache")
    got = asyncio.run(res.resolve_lora(str(vbase), "acme/sentiment@1.0.0"))
    assert isinstance(got, fakes["vllm.lora.request"].LoRARequest)
    assert got.lora_name == "acme/sentiment@1.0.0" and Path(got.lora_path).is_dir() and got.lora_int_id > 0


def test_register_resolver_and_a_vllm_like_lookup(fake_vllm, vregistry, vbase, tmp_path, monkeypatch):
    mod, fakes = fake_vllm
    monkeypatch.setenv("ADAPTERHUB_REGISTRY_URL", vregistry.url)
    monkeypatch.setenv("ADAPTERHUB_BLOBS", str(vregistry.blobs))
    monkeypatch.setenv("ADAPTERHUB_VLLM_CACHE_DIR", str(tmp_path / "cache"))
    mod.register_resolver()
    registry = fakes["vllm.lora.resolver"].LoRAResolverRegistry
    assert list(registry.get_supported_resolvers()) == ["adapterhub"]

    class Other(fakes["vllm.lora.resolver"].LoRAResolver):
        async def resolve_lora(self, base_model_name, lora_name):
            if lora_name == "local-only":
                return fakes["vllm.lora.request"].LoRARequest(lora_name, 1, "/somewhere")
            return None

    resolvers = [registry.get_resolver(n) for n in registry.get_supported_resolvers()] + [Other()]
    ok = asyncio.run(_vllm_like_resolve(resolvers, str(vbase), "acme/sentiment"))
    assert ok.lora_name == "acme/sentiment" and Path(ok.lora_path, "adapter_config.json").is_file()
    assert asyncio.run(_vllm_like_resolve(resolvers, str(vbase), "local-only")).lora_path == "/somewhere"
    assert asyncio.run(_vllm_like_resolve(resolvers, str(vbase), "acme/other")) is None  # refused
    assert "pinned to base" in registry.get_resolver("adapterhub").refusals["acme/other"]


def test_patterns_are_refused_on_a_vllm_that_ignores_them(fake_vllm, vregistry, vbase, vpattern, tmp_path,
                                                          monkeypatch):
    """A vLLM without per-module rank/alpha patterns scales every module by lora_alpha/r: an
    adapter with patterns would be served with other weights than PEFT's, so it is refused."""
    mod, fakes = fake_vllm
    vregistry.publish(vpattern, name="acme/pattern", version="1.0.0", base=vbase)
    res = mod.AdapterHubLoRAResolver(registry=vregistry, cache_dir=tmp_path / "cache")
    ok = asyncio.run(res.resolve_lora(str(vbase), "acme/pattern"))  # this stand-in applies them, as 0.33 does
    assert isinstance(ok, fakes["vllm.lora.request"].LoRARequest)
    monkeypatch.delattr(fakes["vllm.lora.peft_helper"].PEFTHelper, "get_rank_and_scaling")
    monkeypatch.setattr(fakes["vllm"], "__version__", "0.8.5")
    old = mod.AdapterHubLoRAResolver(registry=vregistry, cache_dir=tmp_path / "old-cache")
    assert asyncio.run(old.resolve_lora(str(vbase), "acme/pattern")) is None
    why = old.refusals["acme/pattern"]
    assert "vLLM (0.8.5) ignores rank_pattern and alpha_pattern" in why and "upgrade vLLM" in why
    assert not (tmp_path / "old-cache").exists() or not any((tmp_path / "old-cache").iterdir())
    assert asyncio.run(old.resolve_lora(str(vbase), "acme/sentiment")) is not None  # plain LoRA: still served


def test_trainable_tokens_are_refused_before_anything_is_pulled(vregistry, vbase, vtokens, tmp_path):
    """vLLM does not load PEFT's trainable token rows (vLLM 0.33 fails on the tensor name):
    the resolver says so (export's vllm_limitations) instead of handing vLLM the adapter."""
    vregistry.publish(vtokens, name="acme/tokens", version="1.0.0", base=vbase)
    with pytest.raises(ah.IncompatibleAdapterError, match="trainable tokens"):
        prepare_lora("acme/tokens", registry=vregistry, served_model=vbase, cache_dir=tmp_path / "cache")
    res = _resolver(vregistry, tmp_path)
    assert asyncio.run(res.resolve_lora(str(vbase), "acme/tokens")) is None
    assert "trainable_token_indices" in res.refusals["acme/tokens"]
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("kw, why", [
    ({"modules_to_save": ["lm_head"]}, "modules_to_save only for classifier heads"),
    ({"bias": "lora_only"}, "adapter bias"),
    ({"lora_bias": True}, "LoRA bias"),
    ({"use_dora": True}, "DoRA"),
], ids=["modules_to_save", "bias", "lora_bias", "dora"])
def test_what_vllm_would_serve_differently_is_refused_by_the_resolver(vregistry, vbase, tmp_path, kw, why):
    """Real PEFT adapters with what vLLM drops or does not implement: the resolver answers
    None with the reason, and nothing reaches the cache vLLM would load from."""
    adapter = _lora(vbase, tmp_path / "adapter", seed=5, **kw)
    vregistry.publish(adapter, name="acme/differs", version="1.0.0", base=vbase)
    res = _resolver(vregistry, tmp_path)
    assert asyncio.run(res.resolve_lora(str(vbase), "acme/differs")) is None
    assert why in res.refusals["acme/differs"], res.refusals
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_rank_above_the_servers_max_lora_rank_is_refused(vregistry, vbase, tmp_path):
    small = _resolver(vregistry, tmp_path, max_lora_rank=2)
    assert asyncio.run(small.resolve_lora(str(vbase), "acme/sentiment")) is None
    assert "rank 4 is above the server's --max-lora-rank 2" in small.refusals["acme/sentiment"]
    roomy = _resolver(vregistry, tmp_path, max_lora_rank=8)
    assert asyncio.run(roomy.resolve_lora(str(vbase), "acme/sentiment")) is not None


# --------------------------------------------------------------------------- the real vLLM, when importable


def test_resolver_subclasses_the_real_vllm_resolver(vregistry, vbase, tmp_path):
    if not resolver_mod.vllm_available():
        pytest.skip(f"vLLM is not importable here ({resolver_mod.VLLM_IMPORT_ERROR}); the subclass check "
                    "and a real LoRARequest need vLLM (pip install 'adapterhub-vllm[vllm]' on a CUDA machine)")
    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver

    assert issubclass(resolver_mod.AdapterHubLoRAResolver, LoRAResolver)
    res = resolver_mod.AdapterHubLoRAResolver(registry=vregistry, cache_dir=tmp_path / "cache")
    got = asyncio.run(res.resolve_lora(str(vbase), "acme/sentiment"))
    assert isinstance(got, LoRARequest) and got.lora_name == "acme/sentiment"


def test_real_vllm_reads_the_weights_and_scaling_peft_applies(vregistry, vbase, vpattern, tmp_path, monkeypatch):
    """What the resolver hands vLLM, read by vLLM's own loader (PEFTHelper, LoRAModel, on the
    CPU): every module's scaling * B @ A equals PEFT's delta weight for it, patterns included.
    The GPU kernels that apply it are not exercised here (see the README)."""
    if not resolver_mod.vllm_available():
        pytest.skip(f"vLLM is not importable here ({resolver_mod.VLLM_IMPORT_ERROR}); this reads the adapter "
                    "with vLLM's own loader")
    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from transformers import AutoModelForCausalLM
    from vllm.config.lora import LoRAConfig
    from vllm.lora import lora_model
    from vllm.lora.lora_model import LoRAModel
    from vllm.lora.peft_helper import PEFTHelper

    # vLLM pins CPU copies of LoRA weights for the GPU transfer, which needs an NVIDIA driver;
    # the tensors and scalings read are the same without it
    monkeypatch.setattr(lora_model, "PIN_MEMORY", False)

    vregistry.publish(vpattern, name="acme/pattern", version="1.0.0", base=vbase)
    res = _resolver(vregistry, tmp_path)
    for name in ("acme/sentiment@1.0.0", "acme/pattern"):
        req = asyncio.run(res.resolve_lora(str(vbase), name))
        assert req is not None, res.refusals
        helper = PEFTHelper.from_local_dir(req.lora_path, None)
        helper.validate_legal(LoRAConfig(max_lora_rank=8))
        lm = LoRAModel.from_local_checkpoint(req.lora_path, {"q_proj", "v_proj"}, helper, lora_model_id=1,
                                             device="cpu", dtype=torch.float32)
        peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(vbase), req.lora_path)
        peft_delta = {n.removeprefix("base_model.model."): m.get_delta_weight("default")
                      for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
        assert sorted(lm.loras) == sorted(peft_delta) and len(peft_delta) == 4
        for module, w in lm.loras.items():
            assert torch.equal((w.lora_b @ w.lora_a) * w.scaling, peft_delta[module]), (name, module)
        scales = {m.rsplit(".", 1)[-1]: w.scaling for m, w in lm.loras.items()}
        assert scales == ({"q_proj": 2.0, "v_proj": 2.0} if name.startswith("acme/sentiment")
                          else {"q_proj": 2.0, "v_proj": 1.5})


_PLUGIN_LOAD = """
import asyncio, json, sys
from vllm.plugins import load_general_plugins
from vllm.lora.resolver import LoRAResolverRegistry

load_general_plugins()  # what every vLLM process does at start-up
res = LoRAResolverRegistry.get_resolver("adapterhub")
ok = asyncio.run(res.resolve_lora(sys.argv[1], "acme/sentiment@1.0.0"))
refused = asyncio.run(res.resolve_lora(sys.argv[1], "acme/other"))
print(json.dumps({"resolvers": sorted(LoRAResolverRegistry.get_supported_resolvers()),
                  "type": type(ok).__module__ + "." + type(ok).__name__, "lora_path": ok.lora_path,
                  "refused": refused is None, "why": res.refusals.get("acme/other", "")}))
"""


def test_real_vllm_loads_the_resolver_through_its_entry_point(vregistry, vbase, tmp_path):
    """vLLM's own general-plugin loader, in a fresh process, finds the entry point, registers
    the resolver from the environment, and the resolver answers and refuses."""
    if not resolver_mod.vllm_available():
        pytest.skip(f"vLLM is not importable here ({resolver_mod.VLLM_IMPORT_ERROR}); this runs vLLM's plugin "
                    "loader")
    from importlib.metadata import entry_points

    if "adapterhub_lora_resolver" not in {ep.name for ep in entry_points(group="vllm.general_plugins")}:
        pytest.skip("adapterhub-vllm is not installed as a distribution here (pip install -e "
                    "plugins/adapterhub-vllm), so vLLM cannot find its entry point")
    import os
    import subprocess

    env = {**os.environ, "VLLM_PLUGINS": "adapterhub_lora_resolver", "ADAPTERHUB_REGISTRY_URL": vregistry.url,
           "ADAPTERHUB_BLOBS": str(vregistry.blobs), "ADAPTERHUB_VLLM_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", _PLUGIN_LOAD, str(vbase)], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["resolvers"] == ["adapterhub"] and got["type"] == "vllm.lora.request.LoRARequest"
    assert Path(got["lora_path"]).parent == tmp_path / "cache"
    assert got["refused"] and "pinned to base" in got["why"]


# --------------------------------------------------------------------------- packaging


def test_distribution_metadata():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = meta["project"]
    assert not [d for d in project["dependencies"] if d.lower().startswith("vllm")], "vLLM must stay optional"
    assert any(d.startswith("vllm") for d in project["optional-dependencies"]["vllm"])
    eps = project["entry-points"]
    assert eps["adapterhub"] == {"adapterhub-vllm": "adapterhub_vllm"}
    assert eps["vllm.general_plugins"] == {"adapterhub_lora_resolver": "adapterhub_vllm.resolver:register_resolver"}
    assert callable(resolver_mod.register_resolver)
    assert "vllm" not in sys.modules or resolver_mod.vllm_available()  # importing the plugin never needs vLLM
    assert adapterhub_vllm.register_runtimes is not None


def test_readme_lists_the_gpu_checks():
    readme = (ROOT / "README.md").read_text()
    for needle in ("vllm serve", "--enable-lora", "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "mismatch"):
        assert needle in readme


def test_served_hub_id_with_several_cached_revisions_is_refused(vbase, tmp_path, monkeypatch):
    # vLLM may serve any of them (--revision): fingerprinting the one 'main' points at could pass
    # an adapter that does not fit the served weights. A real huggingface_hub cache layout.
    import shutil

    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--acme--base"
    shas = ["a" * 40, "b" * 40]
    for sha in shas:
        shutil.copytree(vbase, repo / "snapshots" / sha)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(shas[0])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ah.AdapterHubError, match="2 revisions in the Hugging Face cache"):
        served_fingerprint("acme/base")
    shutil.rmtree(repo / "snapshots" / shas[1])
    assert served_fingerprint("acme/base") == ah.fingerprint(vbase).digest
