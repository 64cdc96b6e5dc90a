"""Every LoRA-family variant and IA3 in one mixed batch, each row exactly what PEFT computes for
its adapter alone (issue 12): LoRA, rsLoRA, DoRA (with rsLoRA too), a lora_B bias,
``modules_to_save`` (lm_head and embed_tokens copies), IA3 (output and feed-forward input
scaling, and with modules_to_save), beside base-only rows.

Adapters are made by PEFT (``get_peft_model`` on a small seeded Llama whose attention has
biases, so DoRA's ``y - bias`` and IA3's scaled bias are exercised), every trained tensor
perturbed, saved with ``save_pretrained``, published to a real SQLite registry and attached
through the registry path; the reference is ``PeftModel.from_pretrained`` of that directory
alone. What the runtime still does not compute is refused before loading, and
``check_method`` (what ``resolve --runtime transformers`` asks) says the same as attach.
LoRA on an ``nn.Embedding``: ``test_deploy_embedding``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import adapterhub_sdk as ah
from adapterhub_sdk.adapter_files import NonFiniteError
from adapterhub_sdk.errors import IncompatibleAdapterError

VOCAB, EOS, PAD = 64, 1, 0
ATOL = 1e-5


def _save_base(out: Path, seed: int = 0) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      eos_token_id=EOS, pad_token_id=PAD, bos_token_id=None, attention_bias=True)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # clear winners per step; biases not zero, so they matter
        model.lm_head.weight.mul_(20)
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn(p.shape) * 0.5)
    model.save_pretrained(out)
    vocab = {"<pad>": PAD, "<eos>": EOS, **{f"w{i}": i for i in range(2, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>").save_pretrained(out)
    return out


def make_adapter(base: Path, out: Path, config: Any, seed: int) -> Path:
    """``config`` (a PEFT config) injected by PEFT; every trained tensor perturbed so nothing is
    an identity: LoRA factors ~ N(0, 0.1), DoRA magnitudes and IA3 vectors ~ 1 + N(0, 0.3),
    modules_to_save copies = base + N(0, 0.05)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            noise = torch.randn(p.shape, generator=g)
            if "lora_magnitude_vector" in name or "ia3_l" in name:
                p.copy_(p * (1 + 0.3 * noise) if "lora_magnitude_vector" in name else 1 + 0.3 * noise)
            elif "modules_to_save" in name:
                p.add_(0.05 * noise)
            else:
                p.copy_(0.1 * noise)
    model.save_pretrained(out)
    return out


def _configs() -> dict[str, Any]:
    from peft import IA3Config, LoraConfig

    qv = ["q_proj", "v_proj"]
    return {
        "lora": LoraConfig(r=4, lora_alpha=8, target_modules=qv),
        "rslora": LoraConfig(r=8, lora_alpha=16, target_modules=["k_proj", "o_proj"], use_rslora=True),
        "dora": LoraConfig(r=4, lora_alpha=8, target_modules=[*qv, "down_proj"], use_dora=True),
        "dora-rs": LoraConfig(r=8, lora_alpha=4, target_modules=["k_proj", "up_proj"], use_dora=True,
                              use_rslora=True, rank_pattern={"up_proj": 2}, alpha_pattern={"k_proj": 12}),
        "lora-bias": LoraConfig(r=4, lora_alpha=8, target_modules=[*qv, "o_proj"], lora_bias=True),
        "mts": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"],
                          modules_to_save=["lm_head", "embed_tokens", "norm"]),  # "norm": every *norm layer
        "ia3": IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
        "ia3-mts": IA3Config(target_modules=["q_proj", "up_proj"], feedforward_modules=["up_proj"],
                             modules_to_save=["lm_head"]),
    }


KINDS = list(_configs())


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("variants")
    base = _save_base(d / "base")
    dirs = {kind: make_adapter(base, d / kind, cfg, seed=10 + i) for i, (kind, cfg) in enumerate(_configs().items())}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTERHUB_HOME", str(d / "home"))
        reg = ah.Registry.open(f"sqlite:///{d / 'registry.db'}", blobs=d / "blobs")
        for kind, path in dirs.items():
            reg.publish(path, name=f"variants/{kind}", version="1.0.0", base=base)
        yield {"base": base, "dirs": dirs, "registry": reg, "tmp": d}
        reg.close()


def deployment(world: dict[str, Any], kinds: list[str] | None = None, **kw: Any) -> ah.Deployment:
    dep = ah.Deployment(str(world["base"]), registry=world["registry"], **kw)
    for kind in kinds or KINDS:
        dep.attach(f"variants/{kind}", name=kind)
    return dep


_PEFT: dict[tuple[str, str | None], Any] = {}


def peft_model(world: dict[str, Any], kind: str | None) -> Any:
    """PeftModel.from_pretrained of that adapter's directory alone (the base alone for None)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    key = (str(world["base"]), kind)
    if key not in _PEFT:
        model = AutoModelForCausalLM.from_pretrained(world["base"])
        _PEFT[key] = (model if kind is None else PeftModel.from_pretrained(model, world["dirs"][kind])).eval()
    return _PEFT[key]


def peft_logits(world: dict[str, Any], kind: str | None, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return peft_model(world, kind)(input_ids=ids).logits


def peft_greedy(world: dict[str, Any], kind: str | None, ids: list[int], steps: int) -> list[int]:
    """PEFT's model, uncached full forwards, greedy, stopping at end of sequence."""
    seq, out = list(ids), []
    for _ in range(steps):
        t = int(peft_logits(world, kind, torch.tensor([seq]))[0, -1].argmax())
        if t == EOS:
            break
        out.append(t)
        seq.append(t)
    return out


def ids_batch(n: int, t: int = 7, seed: int = 0) -> torch.Tensor:
    return torch.randint(2, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


def diff(x: torch.Tensor, y: torch.Tensor) -> float:
    return float((x - y).abs().max())


# --------------------------------------------------------------------------- served exactly


def test_every_variant_is_served_and_resolve_says_so(world):
    reg = world["registry"]
    from adapterhub_sdk.plugins import get_runtime

    rt = get_runtime("transformers")
    for kind in KINDS:
        assert rt.check_method(reg.show(f"variants/{kind}").manifest.method) == [], kind
    hits = {h.name for h in reg.resolve(world["base"], runtime="transformers")}
    assert hits == {f"variants/{k}" for k in KINDS}
    dep = deployment(world)
    assert set(dep.adapters) == set(KINDS)
    # mts: 2 q_proj + copies of lm_head, embed_tokens, model.norm and the 4 layer norms ("norm" ends them all)
    assert dep.adapters["ia3"].rank == 0 and dep.adapters["mts"].modules == 9


def test_mixed_batch_rows_equal_peft_alone(world):
    """One forward: every variant, twice, and base-only rows; each row's logits are PEFT's for
    that adapter alone. Each adapter changes the output (the comparison can fail)."""
    dep = deployment(world)
    names: list[str | None] = [*KINDS, None, *reversed(KINDS), None]
    ids = ids_batch(len(names), seed=1)
    got = dep.forward(ids, names)
    base = peft_logits(world, None, ids)
    for i, name in enumerate(names):
        want = peft_logits(world, name, ids[i:i + 1])
        assert diff(got[i:i + 1], want) < ATOL, name
        if name is not None:
            assert diff(want, base[i:i + 1]) > 1e-2, f"{name} does not change the output: the test would not see it"
    # every row alone, and each adapter for the whole batch (the one-adapter path)
    for kind in KINDS:
        assert diff(dep.forward(ids[:3], kind), peft_logits(world, kind, ids[:3])) < ATOL, kind
    # the same composition again (per-row stacks rebuilt or reused) gives the same
    assert torch.equal(dep.forward(ids, names), got)
    small = ["dora", "ia3"]
    first = dep.forward(ids[:2], small)
    assert torch.equal(dep.forward(ids[:2], small), first)


def test_left_padded_generation_equals_peft_greedy(world):
    """Deployment.generate on prompts of different lengths (left padding, KV cache), rows of
    every variant mixed: the tokens of PEFT's model generating each prompt alone."""
    dep = deployment(world)
    names: list[str | None] = [*KINDS, None]
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(2, VOCAB, (3 + i % 5,), generator=g).tolist() for i in range(len(names))]
    out = dep.generate(prompts, names, max_new_tokens=6)
    for name, p, row in zip(names, prompts, out, strict=True):
        assert row["token_ids"] == peft_greedy(world, name, p, 6), name


def test_a_bfloat16_base_runs_the_adapters_in_float32_as_peft_does(world):
    """PEFT loads adapters in float32 on a half-precision base (``autocast_adapter_dtype``) and
    casts each adapted output back once; the deployment does the same, so rows match PEFT's
    bfloat16 logits up to float32 noise (bit for bit on this machine)."""

    dep = ah.Deployment(str(world["base"]), registry=world["registry"], dtype=torch.bfloat16)
    names: list[str | None] = [*KINDS, None]
    for kind in KINDS:
        dep.attach(f"variants/{kind}", name=kind)
    # a quarter of one bfloat16 step at the largest logit: 0 here; adding the update in
    # bfloat16 (what this runtime did before) was 0.016-0.035 off, 1/3-3/4 of a step
    assert_bf16_rows_equal_peft(world, dep, names, ids_batch(len(names), seed=11))


def assert_bf16_rows_equal_peft(world: dict[str, Any], dep: Any, names: list[str | None], ids: Any) -> None:
    """Each row of one mixed bfloat16 forward against PEFT serving that row's adapter (None:
    the base) alone on a bfloat16 base, within a quarter of one bfloat16 step."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    got = dep.forward(ids, names).float()
    for i, kind in enumerate(names):
        model = AutoModelForCausalLM.from_pretrained(world["base"], dtype=torch.bfloat16)
        ref = (model if kind is None else PeftModel.from_pretrained(model, world["dirs"][kind])).eval()
        with torch.no_grad():
            want = ref(input_ids=ids[i:i + 1]).logits.float()
        tol = 2.0 ** -7 * float(want.abs().max()) / 4
        assert diff(got[i:i + 1], want) <= tol, (kind, diff(got[i:i + 1], want), tol)


def test_merge_of_each_variant_equals_peft_and_unmerges_exactly(world):
    from transformers import AutoModelForCausalLM

    dep = deployment(world)
    fresh = AutoModelForCausalLM.from_pretrained(world["base"]).state_dict()
    ids = ids_batch(2, seed=3)
    for kind in KINDS:
        dep.merge(kind)
        assert dep.merged == kind
        assert diff(dep.forward(ids, kind), peft_logits(world, kind, ids)) < ATOL, kind
        dep.unmerge()
        assert all(torch.equal(v, fresh[k]) for k, v in dep.model.state_dict().items()), kind
    # a batch naming anything else unmerges first and is computed per row
    dep.merge("dora")
    got = dep.forward(ids, ["dora", "ia3"])
    assert dep.merged is None
    assert diff(got[1:], peft_logits(world, "ia3", ids[1:])) < ATOL


def test_a_lora_bias_on_a_module_without_bias_is_served_but_not_merged(world, tmp_path):
    # PEFT runs it (and warns that merging is impossible); so does the deployment, and merge refuses
    from peft import LoraConfig

    path = make_adapter(world["base"], tmp_path / "nb", LoraConfig(r=2, target_modules=["down_proj"],
                                                                           lora_bias=True), seed=40)
    world["dirs"]["nb"] = path
    world["registry"].publish(path, name="variants/nb", version="1.0.0", base=world["base"])
    dep = deployment(world, ["nb"])
    ids = ids_batch(2, seed=4)
    assert diff(dep.forward(ids, ["nb", None]), torch.cat([peft_logits(world, "nb", ids[:1]),
                                                             peft_logits(world, None, ids[1:])])) < ATOL
    with pytest.raises(IncompatibleAdapterError, match="no bias to merge"):
        dep.merge("nb")
    assert dep.merged is None
    assert diff(dep.forward(ids, "nb"), peft_logits(world, "nb", ids)) < ATOL  # nothing half-merged
    # a merged name swapped for it: the swap happens, served unmerged, with a warning
    dep.attach("variants/lora", name="live")
    dep.merge("live")
    with pytest.warns(UserWarning, match="served unmerged"):
        dep.replace("live", "variants/nb")
    assert dep.merged is None and dep.adapters["live"].ref == "variants/nb@1.0.0"
    assert diff(dep.forward(ids, "live"), peft_logits(world, "nb", ids)) < ATOL


def test_modules_to_save_on_a_base_with_tied_embeddings(tmp_path):
    """lm_head tied to embed_tokens: PEFT's copy of lm_head is its own tensor (the embedding
    keeps the base's); a row with the adapter gets the copy's logits, others the tied head's."""
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM

    from conftest import save_base

    base = save_base(tmp_path / "tied", tie=True)
    path = make_adapter(base, tmp_path / "mts", LoraConfig(r=2, target_modules=["v_proj"],
                                                           modules_to_save=["lm_head"]), seed=70)
    reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=tmp_path / "blobs")
    reg.publish(path, name="tied/mts", version="1.0.0", base=base)
    dep = ah.Deployment(str(base), registry=reg)
    dep.attach("tied/mts", name="m")
    ids = ids_batch(2, seed=12)
    got = dep.forward(ids, ["m", None])
    with torch.no_grad():
        want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), path).eval()(input_ids=ids).logits
        plain = AutoModelForCausalLM.from_pretrained(base).eval()(input_ids=ids).logits
    assert diff(got[:1], want[:1]) < ATOL and diff(got[1:], plain[1:]) < ATOL
    assert diff(want, plain) > 1e-3
    assert dep.model.lm_head.weight is dep.model.model.embed_tokens.weight  # the base stays tied
    reg.close()


def test_swap_and_detach_leave_other_rows_exact(world):
    dep = deployment(world, ["lora", "dora", "ia3", "mts"])
    ids = ids_batch(4, seed=5)
    names = ["dora", "ia3", "mts", "lora"]
    dep.forward(ids, names)
    dep.replace("dora", "variants/ia3-mts")  # served as "dora" now: the ia3-mts adapter
    dep.detach("mts")
    got = dep.forward(ids, ["dora", "ia3", None, "lora"])
    for i, kind in enumerate(["ia3-mts", "ia3", None, "lora"]):
        assert diff(got[i:i + 1], peft_logits(world, kind, ids[i:i + 1])) < ATOL, kind
    assert dep.memory()["adapter_bytes"] == sum(a.nbytes for a in dep.adapters.values())


def test_directories_attach_the_same_way(world, tmp_path):
    """attach_directory (the server's load endpoints): a pulled DoRA directory (pinned by its
    manifest: exact) and a plain PEFT IA3+modules_to_save directory (unpinned: structural)."""
    from adapterhub_sdk.deploy import StructuralMatchWarning
    from adapterhub_sdk.deploy_dir import attach_directory

    pulled = world["registry"].pull("variants/dora@1.0.0", tmp_path / "pulled")
    dep = ah.Deployment(str(world["base"]))
    assert attach_directory(dep, pulled, name="d").verdict == "exact"
    with pytest.warns(StructuralMatchWarning):
        assert attach_directory(dep, world["dirs"]["ia3-mts"], name="i").pinned is False
    ids = ids_batch(3, seed=6)
    got = dep.forward(ids, ["i", "d", None])
    for i, kind in enumerate(["ia3-mts", "dora", None]):
        assert diff(got[i:i + 1], peft_logits(world, kind, ids[i:i + 1])) < ATOL, kind


# --------------------------------------------------------------------------- refused before loading


def test_what_is_not_computed_as_peft_does_is_refused_with_the_reason(world, tmp_path):
    """Trained base biases (``bias='all'``) and a trainable-token embedding: refused by attach
    with exactly the reasons the runtime check (``resolve --runtime transformers``) gives."""
    from peft import LoraConfig

    from adapterhub_sdk.plugins import get_runtime

    reg = world["registry"]
    cases = {"biases": (LoraConfig(r=2, target_modules=["q_proj"], bias="all"), "trained base biases"),
             "tokens": (LoraConfig(r=2, target_modules=["q_proj"], trainable_token_indices=[3, 5]),
                        "trained embedding rows")}
    dep = ah.Deployment(str(world["base"]), registry=reg)
    for name, (cfg, needle) in cases.items():
        path = make_adapter(world["base"], tmp_path / name, cfg, seed=50)
        reg.publish(path, name=f"refused/{name}", version="1.0.0", base=world["base"])
        expected = get_runtime("transformers").check_method(reg.show(f"refused/{name}").manifest.method)
        assert len(expected) == 1 and needle in expected[0], expected
        with pytest.raises(IncompatibleAdapterError) as exc:
            dep.attach(f"refused/{name}")
        assert exc.value.reasons == expected
        assert f"refused/{name}" not in {h.name for h in reg.resolve(world["base"], runtime="transformers")}
    assert dep.adapters == {}


def test_a_dora_norm_of_zero_is_refused_where_peft_gives_non_finite_output(world, tmp_path):
    """A DoRA update that cancels one output row of W: ||W + s B A|| = 0 there, so PEFT divides
    by zero; attach refuses it by name instead of serving NaN/Inf."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(world["base"]),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["v_proj"], use_dora=True))
    layer = model.base_model.model.model.layers[0].self_attn.v_proj
    with torch.no_grad():  # scaling 2: row 3 of W + 2 * B A = W[3] - W[3] = 0
        layer.lora_A["default"].weight.zero_()
        layer.lora_A["default"].weight[0].copy_(layer.base_layer.weight[3])
        layer.lora_B["default"].weight.zero_()
        layer.lora_B["default"].weight[3, 0] = -0.5
    model.save_pretrained(tmp_path / "zero")
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(world["base"]), tmp_path / "zero").eval()
    with torch.no_grad():
        assert not torch.isfinite(peft(input_ids=ids_batch(1)).logits).all()
    world["registry"].publish(tmp_path / "zero", name="refused/zero-norm", version="1.0.0", base=world["base"])
    dep = ah.Deployment(str(world["base"]), registry=world["registry"])
    with pytest.raises(IncompatibleAdapterError, match="DoRA's weight norm"):
        dep.attach("refused/zero-norm")
    assert dep.adapters == {}


def test_pin_and_non_finite_checks_still_come_first(world, tmp_path):
    """A DoRA adapter trained on other base weights is refused under strict before its tensors
    are used; an IA3 adapter holding NaN is refused as non-finite; nothing is attached."""
    from peft import IA3Config, LoraConfig
    from safetensors.torch import load_file, save_file

    other = _save_base(tmp_path / "other", seed=1)
    dora = make_adapter(other, tmp_path / "dora-other", LoraConfig(r=2, target_modules=["q_proj"],
                                                                       use_dora=True), seed=60)
    reg = world["registry"]
    reg.publish(dora, name="pin/dora-other", version="1.0.0", base=other)
    strict = ah.Deployment(str(world["base"]), registry=reg, strict=True)
    with pytest.raises(IncompatibleAdapterError, match="other base weights"):
        strict.attach("pin/dora-other")
    assert strict.adapters == {} and not strict._wrapped

    bad = make_adapter(world["base"], tmp_path / "ia3-nan", IA3Config(target_modules=["k_proj"],
                                                                           feedforward_modules=[]), seed=61)
    weights = bad / "adapter_model.safetensors"
    tensors = load_file(weights)
    key = next(iter(tensors))
    tensors[key][0, 0] = float("nan")
    save_file(tensors, weights)
    reg.publish(bad, name="pin/ia3-nan", version="1.0.0", base=world["base"], allow_nonfinite=True)
    dep = ah.Deployment(str(world["base"]), registry=reg)
    with pytest.raises(NonFiniteError):
        dep.attach("pin/ia3-nan")
    assert dep.adapters == {} and not dep._wrapped


# --------------------------------------------------------------------------- over HTTP


def test_dora_and_ia3_beside_lora_in_one_continuous_batch_over_http(world):
    """The server's continuous scheduler drives the same per-row selection: concurrent
    requests for DoRA, IA3 (+ modules_to_save) and plain LoRA share decode steps, and each
    gets the tokens PEFT's model gives that adapter alone."""
    pytest.importorskip("uvicorn")
    from test_continuous import _gather, _tokens, serving

    dep = deployment(world, ["lora", "dora", "ia3", "ia3-mts"])
    g = torch.Generator().manual_seed(9)
    kinds = ["dora", "lora", "ia3", "ia3-mts", "dora", "ia3", None, "lora"]
    prompts = [torch.randint(2, VOCAB, (3 + i % 6,), generator=g).tolist() for i in range(len(kinds))]
    bodies = [{"model": kind or "tiny", "prompt": p, "max_tokens": 6, "temperature": 0, "logprobs": 1}
              for kind, p in zip(kinds, prompts, strict=True)]
    with serving(dep) as s:
        replies = _gather(s.url, bodies)
    for kind, p, reply in zip(kinds, prompts, replies, strict=True):
        got = [t.strip() for t in _tokens(reply["choices"][0])]
        assert got == [f"w{t}" for t in peft_greedy(world, kind, p, 6)], kind
