"""Mixed batches on a model that calls a module once for the whole batch with a batch
dimension of 1: GPT-2 looks its position embedding (``wpe``) up with ``position_ids`` of
shape [1, T] and broadcasts the result. Each row of ``Deployment.forward`` on adapters that
touch ``wpe`` (a LoRA on it; a ``modules_to_save`` copy of it beside a LoRA on ``wte``), in any
order, with base rows between, is PEFT's logits for that row's adapter alone. A module called
with a row count that is neither the batch's nor 1 is refused, never guessed.

Before: the single broadcast row was taken as row 0: row 0's adapter update reached every row
(base rows off by 0.98 and 1.04, silently) and an adapter on a later row raised IndexError."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import adapterhub_sdk as ah
from adapterhub_sdk.errors import IncompatibleAdapterError

from conftest import save_perturbed

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _base(out: Path) -> Path:
    from transformers import AutoModelForCausalLM, GPT2Config

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=128,
                                                n_positions=64)).eval().save_pretrained(out)
    return out


def _adapter(base: Path, out: Path, seed: int, **kw) -> Path:
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    return save_perturbed(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=4, lora_alpha=8, **kw), out,
                          seed=seed)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt2-broadcast")
    base = _base(d / "base")
    dirs = {"pos": _adapter(base, d / "pos", 40, target_modules=["wpe"]),
            "copy": _adapter(base, d / "copy", 41, target_modules=["wte"], modules_to_save=["wpe"])}
    reg = ah.Registry.open(f"sqlite:///{d / 'r.db'}", blobs=d / "blobs")
    for k, path in dirs.items():
        reg.publish(path, name=f"acme/{k}", version="1.0.0", base=base)
    dep = ah.Deployment(str(base), registry=reg)
    for k in dirs:
        dep.attach(f"acme/{k}@1.0.0", name=k)
    yield base, dirs, dep
    reg.close()


def _peft(base: Path, adapter: Path | None, ids: torch.Tensor) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    model = (model if adapter is None else PeftModel.from_pretrained(model, str(adapter))).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits[0]


@pytest.mark.parametrize("rows", [["pos", None], ["copy", None], [None, "pos"], ["pos", "copy", None],
                                  [None, "copy", "pos", None, "copy"]], ids=lambda r: ",".join(map(str, r)))
def test_each_row_is_peft_for_its_adapter(world, rows):
    base, dirs, dep = world
    ids = torch.randint(0, 128, (1, 9), generator=torch.Generator().manual_seed(5))
    refs = {k: _peft(base, dirs.get(k) if k else None, ids) for k in set(rows)}
    assert not torch.equal(refs.get("pos", refs[None]), refs[None]) or "pos" not in rows
    got = dep.forward(ids.repeat(len(rows), 1), rows)
    for i, kind in enumerate(rows):
        assert torch.equal(got[i], refs[kind]), (i, kind, float((got[i] - refs[kind]).abs().max()))


def test_a_row_count_that_is_neither_the_batchs_nor_1_is_refused():
    from adapterhub_sdk.multilora import RowSlots, batch_rows

    rows = RowSlots()
    rows.set([0, -1, 1])
    x = torch.zeros(3, 4)
    assert batch_rows(rows, torch.nn.Linear(4, 4), x)[0] is x
    one = torch.arange(4.0).reshape(1, 4)
    wide, out = batch_rows(rows, torch.nn.Linear(4, 4), one, one * 2)
    assert wide.shape == (3, 4) and out.shape == (3, 4) and torch.equal(out[2], one[0] * 2)
    out[0] += 1  # a fresh tensor: writing one row leaves the others
    assert torch.equal(out[1], one[0] * 2)
    with pytest.raises(IncompatibleAdapterError, match=r"a batch of 3 rows on different adapters reached a Linear "
                                                       r"called with 6 rows"):
        batch_rows(rows, torch.nn.Linear(4, 4), torch.zeros(6, 4))
