"""Half-precision rows are PEFT's bit for bit (review): on a bfloat16 or float16 base with
plain LoRA on all seven Llama projections, and rsLoRA with a rank_pattern (DoRA and lora_bias
beside them), each row of one mixed batch (adapters and base rows) has exactly the logits PEFT
gives for that row's adapter alone, and greedy ``Deployment.generate`` gives PEFT's greedy tokens.

Before: the scaling was folded into B before the matmul and the matmul ran on a transposed
copy of A, where PEFT runs ``F.linear`` on lora_A's weight, then lora_B's, then multiplies
by the scaling: 33-1441 of 6144 logits differed (up to 5e-3) and 1 greedy prompt in 24
diverged. A float32 base is held to the same ``torch.equal``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import adapterhub_sdk as ah

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB = 128
ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def _configs() -> dict[str, Any]:
    from peft import LoraConfig

    return {
        "lora": LoraConfig(r=3, lora_alpha=5, target_modules=ALL),
        "rslora": LoraConfig(r=8, lora_alpha=12.5, target_modules=ALL, use_rslora=True,
                             rank_pattern={"down_proj": 2, "q_proj": 5}, alpha_pattern={"v_proj": 7}),
        "dora": LoraConfig(r=4, lora_alpha=6, target_modules=ALL, use_dora=True),
        "lora-bias": LoraConfig(r=4, lora_alpha=6, target_modules=ALL, lora_bias=True),
    }


def _base(out: Path, dtype: torch.dtype) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(cfg).eval().to(dtype).save_pretrained(out)
    return out


def _adapter(base: Path, out: Path, config: Any, seed: int) -> Path:
    """Saved by PEFT on the base at its own dtype; every LoRA factor perturbed (not a no-op)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.copy_(p + (torch.randn(p.shape, generator=g) * 0.2).to(p.dtype))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module", params=list(DTYPES))
def world(request, tmp_path_factory) -> dict[str, Any]:
    dtype = DTYPES[request.param]
    d = tmp_path_factory.mktemp(f"half-{request.param}")
    base = _base(d / "base", dtype)
    dirs = {k: _adapter(base, d / k, cfg, seed=i) for i, (k, cfg) in enumerate(_configs().items())}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTERHUB_HOME", str(d / "home"))
        reg = ah.Registry.open(f"sqlite:///{d / 'registry.db'}", blobs=d / "blobs")
        for k, path in dirs.items():
            reg.publish(path, name=f"half/{k}", version="1.0.0", base=base)
        dep = ah.Deployment(str(base), registry=reg)
        for k in dirs:
            dep.attach(f"half/{k}", name=k)
        yield {"dtype": dtype, "base": base, "dirs": dirs, "dep": dep, "peft": {}}
        reg.close()


def peft(world: dict[str, Any], kind: str | None) -> Any:
    """PeftModel.from_pretrained of that adapter's directory alone on the base (the base for None)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if kind not in world["peft"]:
        model = AutoModelForCausalLM.from_pretrained(world["base"], dtype=world["dtype"])
        world["peft"][kind] = (model if kind is None else PeftModel.from_pretrained(model, world["dirs"][kind])).eval()
    return world["peft"][kind]


def test_each_row_of_a_mixed_batch_is_peft_bit_for_bit(world):
    dep = world["dep"]
    assert dep.model.dtype == world["dtype"]
    names: list[str | None] = ["lora", None, "rslora", "rslora", "lora", "dora", "lora-bias", None, "dora"]
    ids = torch.randint(0, VOCAB, (len(names), 12), generator=torch.Generator().manual_seed(0))
    got = dep.forward(ids, names)
    assert got.dtype == world["dtype"]
    with torch.no_grad():
        for i, kind in enumerate(names):
            want = peft(world, kind)(input_ids=ids[i:i + 1]).logits
            assert torch.equal(got[i:i + 1], want), (kind, int((got[i:i + 1] != want).sum()))
            if kind is not None:  # the adapter changes the row: the comparison can fail
                assert not torch.equal(want, peft(world, None)(input_ids=ids[i:i + 1]).logits)
        for kind in _configs():  # one adapter for the whole batch (the uniform path)
            assert torch.equal(dep.forward(ids, kind), peft(world, kind)(input_ids=ids).logits), kind


def _peft_greedy(world: dict[str, Any], kind: str | None, prompts: list[list[int]]) -> list[list[int]]:
    with torch.no_grad():
        out = peft(world, kind).generate(input_ids=torch.tensor(prompts), attention_mask=torch.ones(
            len(prompts), len(prompts[0]), dtype=torch.long), max_new_tokens=24, do_sample=False,
            eos_token_id=None, pad_token_id=0)
    return out[:, len(prompts[0]):].tolist()


def test_greedy_generate_is_peft_greedy(world):
    """24 prompts in one mixed generate (KV cache, per-row decode steps): each row is PEFT's
    greedy tokens for its adapter on the same 24 prompts (CPU half-precision matmuls round by
    how many rows they see, so PEFT's own row 11 of 24 can differ from that prompt alone: the
    peer is PEFT on a batch of the same size); rows generated alone are PEFT's alone."""
    dep = world["dep"]
    g = torch.Generator().manual_seed(7)
    prompts = [torch.randint(3, VOCAB, (8,), generator=g).tolist() for _ in range(24)]
    names: list[str | None] = [("rslora", None, "lora")[i % 3] for i in range(len(prompts))]
    mixed = dep.generate(prompts, names, max_new_tokens=24, temperature=0.0)
    batched = {kind: _peft_greedy(world, kind, prompts) for kind in set(names)}
    for i, (p, kind, row) in enumerate(zip(prompts, names, mixed, strict=True)):
        ref = batched[kind][i]
        assert row["token_ids"] and row["token_ids"] == ref[:len(row["token_ids"])], (i, kind)
        if i < 3:
            alone = dep.generate([p], kind, max_new_tokens=24, temperature=0.0)[0]["token_ids"]
            assert alone and alone == _peft_greedy(world, kind, [p])[0][:len(alone)], (i, kind)
