"""Every per-module mechanism a deployment has, side by side on one module in one mixed batch:
a modules_to_save copy, a LoRA whose saved base weight differs from the base (PEFT's
save_embedding_layers), a plain LoRA, base-only rows; on ``embed_tokens`` and on a Linear
(``lm_head``). Each row gets PEFT's output for its own adapter alone (float32, atol 1e-5), in
any mix and order of rows and in either order of attach. Before: a saved-base embedding LoRA
re-ran the module's forward on its rows only, which fired the copy's hook with the whole
batch's row indices: 0.77-0.92 logit diffs silently, or an IndexError."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from test_deploy_variants import ATOL, _save_base, diff, ids_batch, make_adapter, peft_logits

import adapterhub_sdk as ah


def _saved_base_lora(base: Path, out: Path, seed: int) -> Path:
    """LoRA on embed_tokens (and v_proj) whose saved base_layer.weight is not the base's."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["embed_tokens", "v_proj"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        w = model.base_model.model.model.embed_tokens.base_layer.weight
        w.add_(0.5 * torch.randn(w.shape, generator=g))
    model.save_pretrained(out, save_embedding_layers=True)
    return out


def _configs() -> dict[str, Any]:
    from peft import IA3Config, LoraConfig

    return {
        "copy": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], modules_to_save=["embed_tokens"]),
        "emb": LoraConfig(r=2, lora_alpha=16, target_modules=["embed_tokens", "q_proj"]),
        "lora": LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        "lin-copy": LoraConfig(r=4, lora_alpha=8, target_modules=["v_proj"], modules_to_save=["o_proj"]),
        "lin-lora": LoraConfig(r=4, lora_alpha=8, target_modules=["o_proj", "q_proj"], lora_dropout=0.0),
        "lin-dora": LoraConfig(r=2, lora_alpha=4, target_modules=["o_proj"], use_dora=True),
        "lin-ia3": IA3Config(target_modules=["o_proj"], feedforward_modules=["o_proj"]),
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("embedding_rows")
    base = _save_base(d / "base")
    dirs = {kind: make_adapter(base, d / kind, cfg, seed=120 + i) for i, (kind, cfg) in enumerate(_configs().items())}
    dirs["saved"] = _saved_base_lora(base, d / "saved", seed=140)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTERHUB_HOME", str(d / "home"))
        reg = ah.Registry.open(f"sqlite:///{d / 'registry.db'}", blobs=d / "blobs")
        for kind, path in dirs.items():
            reg.publish(path, name=f"rows/{kind}", version="1.0.0", base=base)
        yield {"base": base, "dirs": dirs, "registry": reg, "tmp": d}
        reg.close()


def _deployment(world: dict[str, Any], kinds: list[str]) -> ah.Deployment:
    dep = ah.Deployment(str(world["base"]), registry=world["registry"])
    for kind in kinds:
        dep.attach(f"rows/{kind}", name=kind)
    return dep


def _worst(world: dict[str, Any], dep: ah.Deployment, rows: list[str | None], seed: int) -> float:
    ids = ids_batch(len(rows), seed=seed)
    got = dep.forward(ids, adapters=rows)
    return max(diff(got[i:i + 1], peft_logits(world, n, ids[i:i + 1])) for i, n in enumerate(rows))


EMBEDDING = ["copy", "saved", "emb", "lora", None]


@pytest.mark.parametrize("attach", [EMBEDDING[:4], EMBEDDING[:4][::-1]], ids=["copy-first", "copy-last"])
def test_every_mix_and_order_of_embedding_mechanisms_equals_peft_per_row(world, attach):
    """A copy of embed_tokens, a saved-base embedding LoRA, a plain embedding LoRA, a plain LoRA
    elsewhere and base rows: every ordered pair, every ordered triple, and all of them at once."""
    dep = _deployment(world, attach)
    mixes = [list(p) for k in (2, 3) for p in itertools.permutations(EMBEDDING, k)]
    mixes += [EMBEDDING, EMBEDDING[::-1], ["copy", "saved", "saved", None, "copy", "emb"]]
    bad = {}
    for j, rows in enumerate(mixes):
        try:
            worst = _worst(world, dep, rows, seed=j)
        except Exception as e:  # noqa: BLE001  (an IndexError before the fix: report every mix)
            bad[tuple(rows)] = f"{type(e).__name__}: {e}"
            continue
        if worst > ATOL:
            bad[tuple(rows)] = worst
    assert not bad, bad


def test_uniform_batches_of_each_embedding_mechanism_equal_peft(world):
    dep = _deployment(world, EMBEDDING[:4])
    for kind in EMBEDDING:
        assert _worst(world, dep, [kind] * 3, seed=7) <= ATOL, kind


LINEAR = ["lin-copy", "lin-lora", "lin-dora", "lin-ia3", "copy", "saved", None]


@pytest.mark.parametrize("attach", [LINEAR[:6], LINEAR[:6][::-1]], ids=["copy-first", "copy-last"])
def test_a_copy_lora_dora_and_ia3_on_one_linear_beside_embedding_rows_equal_peft_per_row(world, attach):
    """o_proj: one adapter replaces it (modules_to_save), others have LoRA, DoRA, IA3 (input
    scale) on it; beside the embedding mechanisms, in every ordered pair and all at once."""
    dep = _deployment(world, attach)
    mixes = [list(p) for p in itertools.permutations(LINEAR, 2)] + [LINEAR, LINEAR[::-1]]
    bad = {}
    for j, rows in enumerate(mixes):
        try:
            worst = _worst(world, dep, rows, seed=50 + j)
        except Exception as e:  # noqa: BLE001
            bad[tuple(rows)] = f"{type(e).__name__}: {e}"
            continue
        if worst > ATOL:
            bad[tuple(rows)] = worst
    assert not bad, bad


def test_a_bfloat16_base_mixes_a_copy_and_a_saved_base_embedding_lora_as_peft(world):
    """The same mix on a bfloat16 base: each row within a quarter of one bfloat16 step of PEFT's."""
    from test_deploy_variants import assert_bf16_rows_equal_peft

    dep = ah.Deployment(str(world["base"]), registry=world["registry"], dtype=torch.bfloat16)
    for kind in EMBEDDING[:4]:
        dep.attach(f"rows/{kind}", name=kind)
    names: list[str | None] = ["saved", "copy", None, "emb", "saved", "lora", "copy"]
    assert_bf16_rows_equal_peft(world, dep, names, ids_batch(len(names), seed=13))
