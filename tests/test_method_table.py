"""The method table beyond Llama: layer kinds PEFT adapts that the Llama matrix in
test_methods.py never meets. Convolutions (Conv1d/2d/3d) for LoHa, LoKr, OFT, BOFT, AdaLoRA,
IA3 and LoRA/DoRA; transformers' ``Conv1D`` (GPT-2, weight stored as (in, out)) for IA3, VeRA
and LoRA; OFT on ``nn.Embedding``; LoRA on ``nn.MultiheadAttention``; LoRA on a bare
``nn.Parameter`` (``target_parameters``); LoRA's newer options (``lora_bias``, ``use_rslora``,
``trainable_token_indices``, ``use_bdlora``, KaSA, VeLoRA, MonteCLoRA).

Each row: a tiny model (custom torch modules, or GPT-2 built from a config), a real adapter
saved by PEFT with every trainable tensor perturbed, published against its base (a safetensors
state dict, or a save_pretrained directory for GPT-2), resolved ``exact``, pulled, loaded back by
PEFT with outputs bit-identical to the original PeftModel's, and refused on a base of another
shape with a reason that names the adapted module.

Not in the table because the installed PEFT does not adapt them: LoHa/LoKr on Conv3d, OFT on
Conv1d/Conv3d, BOFT and AdaLoRA on Conv1d/Conv3d (PEFT raises at injection)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import adapterhub_sdk as ah

from conftest import run_cli

torch = pytest.importorskip("torch")
nn = torch.nn


# --------------------------------------------------------------------------- tiny bases


class ConvNet(nn.Module):
    """One convolution (``kernel``) then a linear head; ``dim`` picks Conv1d/2d/3d."""

    def __init__(self, dim: int = 2, cin: int = 4, cout: int = 6, k: int = 3, groups: int = 1):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dim]
        self.dim = dim
        self.kernel = conv(cin, cout, k, padding=1, groups=groups)
        self.head = nn.Linear(cout, 3)

    def forward(self, x):
        y = self.kernel(x).relu()
        return self.head(y.flatten(2).mean(-1))


class EmbNet(nn.Module):
    def __init__(self, vocab: int = 20, width: int = 8):
        super().__init__()
        self.table = nn.Embedding(vocab, width)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        return self.head(self.table(x))


class MhaNet(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        return self.head(self.attn(x, x, x, need_weights=False)[0])


class Scaler(nn.Module):
    """A module whose weight is a bare nn.Parameter (no nn.Linear): target_parameters' case."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(cout, cin) * 0.3)

    def forward(self, x):
        return x @ self.w.T


class ParamNet(nn.Module):
    def __init__(self, cin: int = 8, cout: int = 6):
        super().__init__()
        self.mix = Scaler(cin, cout)
        self.head = nn.Linear(cout, 3)

    def forward(self, x):
        return self.head(self.mix(x).relu())


class Experts(nn.Module):
    """A mixture-of-experts style 3-D parameter, (experts, in, out), as fused MoE layers keep it."""

    def __init__(self, experts: int, cin: int, cout: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(experts, cin, cout) * 0.3)

    def forward(self, x):
        return torch.einsum("bi,eio->beo", x, self.w).mean(1)


class ExpertsNet(nn.Module):
    def __init__(self, cin: int = 8):
        super().__init__()
        self.experts = Experts(3, cin, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.experts(x).relu())


class LinNet(nn.Module):
    def __init__(self, cin: int = 8, hidden: int = 16):
        super().__init__()
        self.proj = nn.Linear(cin, hidden)
        self.head = nn.Linear(hidden, 3)

    def forward(self, x):
        return self.head(self.proj(x).relu())


class EmbConv1DNet(nn.Module):
    """An embedding and transformers' Conv1D in a plain module (no config: the base is a state dict)."""

    def __init__(self, width: int = 8, out: int = 6):
        from transformers.pytorch_utils import Conv1D

        super().__init__()
        self.emb = nn.Embedding(20, width)
        self.conv1d = Conv1D(out, width)  # weight (in, out)
        self.head = nn.Linear(out, 3)

    def forward(self, x):
        return self.head(self.conv1d(self.emb(x)).relu())


class MhaMlp(nn.Module):
    def __init__(self, width: int = 8, hidden: int = 10):
        super().__init__()
        self.mha = nn.MultiheadAttention(width, 2, batch_first=True)
        self.lin0 = nn.Linear(width, hidden)
        self.lin1 = nn.Linear(hidden, 3)

    def forward(self, x):
        return self.lin1(self.lin0(self.mha(x, x, x, need_weights=False)[0]).relu())


def _gpt2(width: int = 16):
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=32, n_positions=16, n_embd=width, n_layer=1, n_head=2)).eval()


def _x(*shape: int):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(7))


@dataclass(frozen=True)
class Base:
    """How to build a base (and one of another shape), and its fixed input."""

    make: Callable[[], Any]
    other: Callable[[], Any]
    input: Callable[[], Any]
    hf: bool = False  # a transformers model: saved with save_pretrained, called with input_ids


CONV1 = Base(lambda: ConvNet(1), lambda: ConvNet(1, cin=5, cout=8), lambda: _x(2, 4, 7))
CONV2 = Base(lambda: ConvNet(2), lambda: ConvNet(2, cin=5, cout=8), lambda: _x(2, 4, 5, 5))
CONV3 = Base(lambda: ConvNet(3), lambda: ConvNet(3, cin=5, cout=8), lambda: _x(2, 4, 3, 4, 4))
# only the input channels differ: what LoRA's lora_A [r, in, k, k] pins
CONV2_IN = Base(lambda: ConvNet(2), lambda: ConvNet(2, cin=6), lambda: _x(2, 4, 5, 5))
CONV2_GROUPED = Base(lambda: ConvNet(2, groups=2), lambda: ConvNet(2, cin=8, groups=2), lambda: _x(2, 4, 5, 5))
GPT2 = Base(_gpt2, lambda: _gpt2(24), lambda: torch.tensor([[1, 5, 9, 3, 7], [4, 8, 2, 30, 0]]), hf=True)
EMB = Base(EmbNet, lambda: EmbNet(width=12), lambda: torch.tensor([[1, 5, 9, 3], [4, 19, 2, 0]]))
MHA = Base(MhaNet, lambda: MhaNet(12), lambda: _x(2, 5, 8))
PARAM = Base(ParamNet, lambda: ParamNet(cin=10), lambda: _x(2, 8))
LIN = Base(LinNet, lambda: LinNet(cin=10), lambda: _x(2, 8))
EXPERTS = Base(ExpertsNet, lambda: ExpertsNet(cin=10), lambda: _x(2, 8))
EMB_CONV1D = Base(EmbConv1DNet, lambda: EmbConv1DNet(12, 10), lambda: torch.tensor([[1, 5, 9, 3], [4, 19, 2, 0]]))
MHA_MLP = Base(MhaMlp, lambda: MhaMlp(12, 14), lambda: _x(2, 5, 8))
CONV1_GROUPED = Base(lambda: ConvNet(1, groups=2), lambda: ConvNet(1, cin=8, cout=8, groups=2), lambda: _x(2, 4, 7))
CONV2_1X1 = Base(lambda: ConvNet(2, k=1), lambda: ConvNet(2, cin=5, cout=8, k=1), lambda: _x(2, 4, 5, 5))


# --------------------------------------------------------------------------- the table


def cfg(kind: str, **kw) -> Callable[[], Any]:
    def make():
        import peft

        return getattr(peft, kind)(**kw)
    return make


@dataclass(frozen=True)
class Row:
    id: str
    base: Base
    config: Callable[[], Any]
    method: str  # manifest method.type
    module: str  # what the other-shape refusal must name


K = ["kernel"]
ROWS = [
    # convolutions
    Row("loha-conv1d", CONV1, cfg("LoHaConfig", r=2, alpha=4, target_modules=K), "loha", "kernel"),
    Row("loha-conv2d", CONV2, cfg("LoHaConfig", r=2, alpha=4, target_modules=K), "loha", "kernel"),
    Row("loha-conv2d-effective", CONV2, cfg("LoHaConfig", r=2, alpha=4, target_modules=K,
                                            use_effective_conv2d=True), "loha", "kernel"),
    Row("loha-conv1d-grouped", CONV1_GROUPED, cfg("LoHaConfig", r=4, alpha=4, target_modules=K), "loha", "kernel"),
    Row("lokr-conv2d-1x1", CONV2_1X1, cfg("LoKrConfig", r=2, alpha=4, target_modules=K), "lokr", "kernel"),
    Row("lokr-conv1d", CONV1, cfg("LoKrConfig", r=2, alpha=4, target_modules=K), "lokr", "kernel"),
    Row("lokr-conv2d", CONV2, cfg("LoKrConfig", r=2, alpha=4, target_modules=K), "lokr", "kernel"),
    Row("lokr-conv2d-effective", CONV2, cfg("LoKrConfig", r=1, alpha=4, target_modules=K, decompose_both=True,
                                            use_effective_conv2d=True), "lokr", "kernel"),
    Row("oft-conv2d", CONV2, cfg("OFTConfig", r=0, oft_block_size=4, target_modules=K), "oft", "kernel"),
    Row("boft-conv2d", CONV2, cfg("BOFTConfig", boft_block_size=4, target_modules=K), "boft", "kernel"),
    Row("adalora-conv2d", CONV2, cfg("AdaLoraConfig", init_r=2, target_r=1, total_step=10,
                                     target_modules=K), "adalora", "kernel"),
    Row("ia3-conv2d", CONV2, cfg("IA3Config", target_modules=K, feedforward_modules=[]), "ia3", "kernel"),
    Row("ia3-conv3d-ff", CONV3, cfg("IA3Config", target_modules=K, feedforward_modules=K), "ia3", "kernel"),
    Row("lora-conv3d", CONV3, cfg("LoraConfig", r=2, lora_alpha=4, target_modules=K), "lora", "kernel"),
    Row("lora-conv2d-in-channels", CONV2_IN, cfg("LoraConfig", r=2, lora_alpha=4, target_modules=K), "lora",
        "kernel"),
    Row("lora-conv2d-grouped", CONV2_GROUPED, cfg("LoraConfig", r=2, lora_alpha=4, target_modules=K), "lora",
        "kernel"),
    Row("dora-conv2d", CONV2, cfg("LoraConfig", r=2, lora_alpha=4, target_modules=K, use_dora=True),
        "lora", "kernel"),
    # GPT-2's Conv1D: weight stored transposed, (in, out)
    Row("ia3-gpt2-conv1d", GPT2, cfg("IA3Config", target_modules=["c_attn", "mlp.c_proj"],
                                     feedforward_modules=["mlp.c_proj"]), "ia3", "c_attn"),
    Row("vera-gpt2-conv1d", GPT2, cfg("VeraConfig", r=4, target_modules=["c_attn"]), "vera", "c_attn"),
    Row("lora-gpt2-conv1d", GPT2, cfg("LoraConfig", r=2, lora_alpha=4, target_modules=["c_attn", "c_fc"],
                                      fan_in_fan_out=True), "lora", "c_fc"),
    # the same in a plain module whose base is a state dict (no config says which layers are Conv1D)
    Row("ia3-conv1d-custom", EMB_CONV1D, cfg("IA3Config", target_modules=["conv1d"], feedforward_modules=["conv1d"]),
        "ia3", "conv1d"),
    Row("vera-conv1d-custom", EMB_CONV1D, cfg("VeraConfig", r=2, target_modules=["conv1d"]), "vera", "conv1d"),
    Row("dora-emb-conv1d-custom", EMB_CONV1D, cfg("LoraConfig", r=2, lora_alpha=4, target_modules=["emb", "conv1d"],
                                                  use_dora=True), "lora", "conv1d"),
    # other layer kinds
    Row("oft-embedding", EMB, cfg("OFTConfig", r=0, oft_block_size=4, target_modules=["table"]), "oft", "table"),
    # an nn.Embedding under a name transformers does not use: resolve knows it from the summary
    Row("lora-embedding", EMB, cfg("LoraConfig", r=2, lora_alpha=4, target_modules=["table"]), "lora", "table"),
    Row("dora-embedding", EMB, cfg("LoraConfig", r=2, lora_alpha=4, target_modules=["table"], use_dora=True),
        "lora", "table"),
    Row("lora-mha", MHA, cfg("LoraConfig", r=2, lora_alpha=4, target_modules=["attn"]), "lora", "attn"),
    Row("lora-mha-and-linear", MHA_MLP, cfg("LoraConfig", r=2, lora_alpha=4, target_modules=["mha", "lin0"]),
        "lora", "mha"),
    Row("lora-target-parameters-on-linear", MHA_MLP, cfg("LoraConfig", r=2, lora_alpha=4, target_modules=["lin0"],
                                                         target_parameters=["lin1.weight"]), "lora", "lin1"),
    Row("lora-target-parameters", PARAM, cfg("LoraConfig", r=2, lora_alpha=4, target_modules=[],
                                             target_parameters=["mix.w"]), "lora", "mix"),
    Row("lora-target-parameters-3d", EXPERTS, cfg("LoraConfig", r=2, lora_alpha=4, target_modules=[],
                                                  target_parameters=["experts.w"]), "lora", "experts.w"),
    # newer LoRA options
    Row("lora-bias", LIN, cfg("LoraConfig", r=2, lora_alpha=4, target_modules=["proj"], lora_bias=True),
        "lora", "proj"),
    Row("rslora-conv2d", CONV2, cfg("LoraConfig", r=2, lora_alpha=4, target_modules=K, use_rslora=True),
        "lora", "kernel"),
    Row("lora-trainable-tokens", EMB, cfg("LoraConfig", r=2, lora_alpha=4, target_modules=["head"],
                                          trainable_token_indices={"table": [1, 3]}), "lora", "table"),
    Row("kasa", LIN, cfg("LoraConfig", r=2, lora_alpha=4, target_modules=["proj"], kasa_config={}), "lora", "proj"),
    Row("velora", LIN, cfg("LoraConfig", r=2, lora_alpha=4, target_modules=["proj"],
                           velora_config={"num_groups": 4}), "lora", "proj"),
    Row("monteclora", LIN, cfg("LoraConfig", r=2, lora_alpha=4, target_modules=["proj"], monteclora_config={}),
        "lora", "proj"),
    Row("bdlora", LIN, cfg("LoraConfig", r=4, lora_alpha=4, target_modules=["proj"], use_bdlora={
        "target_modules_bd_a": ["proj"], "nblocks": 2}), "lora", "proj"),
]


# --------------------------------------------------------------------------- building


def _out(model, x):
    model.eval()
    with torch.no_grad():
        if isinstance(x, torch.Tensor) and x.dtype == torch.long and getattr(model, "config", None) is not None \
                and hasattr(model.config, "vocab_size"):
            return model(input_ids=x).logits
        return model(x)


def _save_base(model, path: Path, hf: bool) -> Path:
    if hf:
        model.save_pretrained(path)
        return path
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "model.safetensors")
    return path / "model.safetensors"


def _load_base(base: Base, path: Path):
    if base.hf:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(path).eval()
    from safetensors.torch import load_file

    model = base.make()
    model.load_state_dict(load_file(path))
    return model.eval()


@dataclass
class Built:
    base: Path
    other: Path
    adapter: Path
    reference: Any


def build(row: Row, root: Path) -> Built:
    from peft import get_peft_model

    torch.manual_seed(0)
    base = row.base.make().eval()
    base_path = _save_base(base, root / "base", row.base.hf)
    torch.manual_seed(1)
    other_path = _save_base(row.base.other().eval(), root / "other", row.base.hf)
    x = row.base.input()
    plain = _out(base, x)
    model = get_peft_model(base, row.config())
    g = torch.Generator().manual_seed(3)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable
    with torch.no_grad():
        for p in trainable:
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    model.save_pretrained(root / "adapter")
    reference = _out(model, x)
    assert not torch.allclose(reference, plain), "the adapter must change the output"
    return Built(base_path, other_path, root / "adapter", reference)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Callable[[Row], Built]:
    cache: dict[str, Built] = {}

    def get(row: Row) -> Built:
        if row.id not in cache:
            cache[row.id] = build(row, tmp_path_factory.mktemp(row.id))
        return cache[row.id]

    return get


def reload(row: Row, b: Built, adapter: Path):
    from peft import PeftModel

    return _out(PeftModel.from_pretrained(_load_base(row.base, b.base), adapter), row.base.input())


# --------------------------------------------------------------------------- the rows


@pytest.fixture
def reg(tmp_path):
    registry = ah.Registry.open(f"sqlite:///{tmp_path / 'registry.db'}", blobs=tmp_path / "blobs")
    try:
        yield registry
    finally:
        registry.close()


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_row(row, reg, built, tmp_path):
    b = built(row)
    name = f"acme/{row.id}"
    reg.publish(b.adapter, name=name, version="1.0.0", base=b.base)
    info = reg.show(f"{name}@1.0.0")
    assert info.method == row.method, (info.method, info.variant)
    assert info.manifest.requirements

    assert (name, "exact") in {(m.name, m.verdict) for m in reg.resolve(b.base)}

    pulled = reg.pull(f"{name}@1.0.0", tmp_path / "pulled")
    assert torch.equal(reload(row, b, pulled), b.reference)

    with pytest.raises(ah.IncompatibleAdapterError) as err:
        reg.publish(b.adapter, name=name, version="1.0.1", base=b.other)
    assert any(row.module in r for r in err.value.reasons), err.value.reasons
    [bad] = [m for m in reg.resolve(b.other, include_incompatible=True) if m.name == name]
    assert bad.verdict == "incompatible"
    assert any(row.module in r for r in bad.reasons), bad.reasons


def test_cli_row(built, tmp_path):
    """One row through the real CLI: publish --base, resolve --json, pull; then PEFT reloads it."""
    row = next(r for r in ROWS if r.id == "loha-conv2d")
    b = built(row)
    args = ("--registry", f"sqlite:///{tmp_path / 'r.db'}", "--blobs", str(tmp_path / "blobs"))
    run_cli(*args, "publish", str(b.adapter), "--name", "acme/conv", "--version", "1.0.0",
            "--base", str(b.base), check=True)
    proc = run_cli(*args, "resolve", "--base", str(b.base), "--json", check=True)
    assert [(m["name"], m["verdict"]) for m in json.loads(proc.stdout)] == [("acme/conv", "exact")]
    run_cli(*args, "pull", "acme/conv@1.0.0", "--out", str(tmp_path / "pulled"), check=True)
    assert torch.equal(reload(row, b, tmp_path / "pulled"), b.reference)
    bad = run_cli(*args, "publish", str(b.adapter), "--name", "acme/conv", "--version", "1.0.1",
                  "--base", str(b.other))
    assert bad.returncode != 0
    assert "kernel" in bad.stderr and len(bad.stderr.strip().splitlines()) <= 2, bad.stderr


def test_pinned_requirements_refine_the_adapters_own(built):
    """Requirements pinned at publish (a flattened kernel pinned to the kernel's shape) only add
    precision to what the adapter files alone give, so a pulled manifest can be checked against
    its files (``methods.base.refines``, the rule the Hub import needs)."""
    from adapterhub_sdk.methods.base import refines
    from adapterhub_sdk.package import pack

    pinned_any = False
    for row in ROWS:
        b = built(row)
        with pack(b.adapter) as pkg:
            free = dict(pkg.requirements)
            pkg.require_base(ah.fingerprint(b.base, use_cache=False))
            assert refines(free, pkg.requirements), (row.id, free, pkg.requirements)
            pinned_any |= free != pkg.requirements
    assert pinned_any
    # a flattened size the kernel does not have is no refinement
    assert not refines({"kernel.weight": [6, 35]}, {"kernel.weight": [6, 4, 3, 3]})
    assert not refines({"kernel.weight": [7, 36]}, {"kernel.weight": [6, 4, 3, 3]})


def test_hub_pull_of_a_pinned_conv_adapter(hub_env, built, tmp_path):
    """Against the local Hub server (olah): a LoHa on a Conv2d, published with --base (its
    requirement pinned to the kernel's shape) and put in a repo with its manifest, is imported
    by a fresh registry: the manifest's requirements are checked against the files as a
    refinement of the flattened [out, in*k*k], not refused as if they contradicted them."""
    from hubserver import make_hub_repo, unique_repo_id

    from adapterhub_sdk.hub import CARD_KEEP, MANIFEST

    row = next(r for r in ROWS if r.id == "loha-conv2d")
    b = built(row)
    src = ah.Registry.open(f"sqlite:///{tmp_path / 'src.db'}", blobs=tmp_path / "src-blobs")
    src.publish(b.adapter, name="acme/conv", version="1.0.0", base=b.base)
    manifest = src.show("acme/conv@1.0.0").manifest
    src.close()
    assert manifest.requirements["kernel.weight"] == [6, 4, 3, 3]
    # the repo layout a push writes: the package's own README.md kept under CARD_KEEP
    files = {(CARD_KEEP if p.name == "README.md" else p.name): p.read_bytes() for p in b.adapter.iterdir()}
    repo = make_hub_repo(hub_env.mirrors, unique_repo_id("conv"), {**files, MANIFEST: manifest.to_json()},
                         tags=["v1.0.0"])
    reg = ah.Registry.open()
    try:
        reg.pull(f"hf://{repo.repo_id}@1.0.0", tmp_path / "pulled")
        assert reg.show("acme/conv@1.0.0").manifest.digest == manifest.digest
        assert torch.equal(reload(row, b, tmp_path / "pulled"), b.reference)
    finally:
        reg.close()


# --------------------------------------------------------------------------- the generic path


@dataclass(frozen=True)
class GenericRow:
    row: Row
    how: str  # what the summary's "validated" must say
    refused: bool  # whether a base of another shape is refused at publish (PEFT's own injection tells)
    needle: str  # what a refusal at publish must name
    module: str  # what the refusal at resolve (the pinned shapes) must name


GENERIC_ROWS = [
    # RandLoRA saves its shared projections on the tuner (base_model.randlora_A): PEFT creates them only
    # through get_peft_model, whose injection on the meta device then gives every key and shape
    GenericRow(Row("randlora-gpt2", GPT2, cfg("RandLoraConfig", r=4, target_modules=["c_attn"]), "generic",
                   "randlora_A"), "meta device", True, "randlora_A", "c_attn"),
    # FRoD's init decomposes the base weights: nothing to compute on the meta device, so only the
    # modules' existence is checked (and said); the requirements pin the base's shapes for resolve
    GenericRow(Row("frod-gpt2", GPT2, cfg("FrodConfig", target_modules=["c_attn"]), "generic", "c_attn"),
               "weight values", False, "c_attn", "c_attn"),
    # a custom model's state dict has no config to build it from: the touched modules are rebuilt
    # from their weight shapes (a 2-D weight tried as Linear, transformers' Conv1D, Embedding)
    GenericRow(Row("hra-custom", LIN, cfg("HRAConfig", r=2, target_modules=["proj"]), "generic", "proj"),
               "rebuilt on the meta device", True, "proj.hra_u", "proj"),
    GenericRow(Row("deft-conv1d-custom", EMB_CONV1D, cfg("DeftConfig", target_modules=["conv1d"]), "generic",
                   "conv1d"), "rebuilt on the meta device", True, "conv1d.deft", "conv1d"),
    # an nn.Embedding and a Conv1D in one adapter: each 2-D weight read the way PEFT's tensors fit
    GenericRow(Row("hira-emb-conv1d-custom", EMB_CONV1D, cfg("HiraConfig", target_modules=["emb", "conv1d"]),
                   "generic", "conv1d"), "rebuilt on the meta device", True, "hira_", "conv1d"),
    GenericRow(Row("trainable-tokens-custom", EMB_CONV1D, cfg("TrainableTokensConfig", target_modules=["emb"],
                                                              token_indices=[0, 1, 3]), "generic", "emb"),
               "rebuilt on the meta device", True, "emb.trainable_tokens_delta", "emb"),
    # a convolution that disagrees is not refused at publish (its groups are not in the checkpoint;
    # they could explain it), but its pinned shapes still refuse another base at resolve
    GenericRow(Row("hra-conv2d-custom", CONV2, cfg("HRAConfig", r=2, target_modules=K), "generic", "kernel"),
               "rebuilt on the meta device", False, "kernel", "kernel"),
    # where the rebuilt layers do not tell (FRoD's init reads the weights): existence, and said
    GenericRow(Row("frod-custom", LIN, cfg("FrodConfig", target_modules=["proj"]), "generic", "proj"),
               "do not tell", False, "proj", "proj"),
]


@pytest.mark.parametrize("g", GENERIC_ROWS, ids=[g.row.id for g in GENERIC_ROWS])
def test_generic_row(g, reg, built, tmp_path):
    """Methods without their own plugin: published, loaded back bit-identical, the summary's
    ``validated`` saying how far the check went; a base of another shape is refused at publish
    where PEFT's injection can tell, and at resolve (the pinned shapes) in every case."""
    row, b = g.row, built(g.row)
    name = f"acme/{row.id}"
    reg.publish(b.adapter, name=name, version="1.0.0", base=b.base)
    info = reg.show(f"{name}@1.0.0")
    assert info.method == "generic"
    validated = info.manifest.method["summary"]["validated"]
    assert validated.startswith("generic: ") and g.how in validated, validated
    assert (name, "exact") in {(m.name, m.verdict) for m in reg.resolve(b.base)}
    pulled = reg.pull(f"{name}@1.0.0", tmp_path / "pulled")
    assert torch.equal(reload(row, b, pulled), b.reference)

    [bad] = [m for m in reg.resolve(b.other, include_incompatible=True) if m.name == name]
    assert bad.verdict == "incompatible" and any(g.module in r for r in bad.reasons), bad.reasons
    if g.refused:
        with pytest.raises(ah.IncompatibleAdapterError) as err:
            reg.publish(b.adapter, name=name, version="1.0.1", base=b.other)
        assert any(g.needle in r for r in err.value.reasons), err.value.reasons


def test_existence_only_is_said(reg, built):
    """OFT with block_share keeps one rotation for every block: the input size is not in the
    adapter, so only the module's existence is checked, and the summary says so; a method that
    checked every shape records nothing there."""
    row = Row("oft-conv2d-block-share", CONV2, cfg("OFTConfig", r=4, oft_block_size=0, target_modules=K,
                                                   block_share=True), "oft", "kernel")
    b = built(row)
    reg.publish(b.adapter, name="acme/shared", version="1.0.0", base=b.base)
    summary = reg.show("acme/shared@1.0.0").manifest.method["summary"]
    assert summary["validated"] == "oft: shapes checked except for kernel.weight, whose existence only is checked"
    exact = next(r for r in ROWS if r.id == "oft-conv2d")
    reg.publish(built(exact).adapter, name="acme/exact", version="1.0.0", base=built(exact).base)
    assert "validated" not in reg.show("acme/exact@1.0.0").manifest.method["summary"]


# --------------------------------------------------------------------------- the transformers runtime


def _served_output(dep: Any, row: Row, name: str) -> Any:
    x = row.base.input()
    with torch.no_grad(), dep.use(name, batch_size=int(x.shape[0])):
        return _out(dep.model, x)


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_the_transformers_runtime_verdict_is_what_attach_does(row, reg, built):
    """``resolve --runtime transformers`` (the backend's ``check_method`` on the manifest) and
    ``Deployment.attach`` agree on every row: refused by both with the same reasons, or served
    with PEFT's output. LoRA on an ``nn.Embedding`` is served like any other row; DoRA,
    ``lora_bias`` or ``ensure_weight_tying`` on one are refused by both, naming the module."""
    from adapterhub_sdk.plugins import get_runtime

    b = built(row)
    name = f"acme/{row.id}"
    reg.publish(b.adapter, name=name, version="1.0.0", base=b.base)
    manifest = reg.show(name).manifest
    reasons = get_runtime("transformers").check_method({**manifest.method, "requirements": manifest.requirements})
    [hit] = [m for m in reg.resolve(b.base, runtime="transformers", include_incompatible=True) if m.name == name]
    assert hit.verdict == ("incompatible" if reasons else "exact")
    assert list(hit.reasons[:len(reasons)]) == reasons
    dep = ah.Deployment(_load_base(row.base, b.base), registry=reg)
    if reasons:
        with pytest.raises(ah.IncompatibleAdapterError) as err:
            dep.attach(name, name="x")
        assert err.value.reasons == reasons
        assert dep.adapters == {}
        return
    dep.attach(name, name="x")
    assert torch.allclose(_served_output(dep, row, "x"), b.reference, atol=1e-5, rtol=0), row.id


def test_cli_resolve_refuses_dora_on_an_embedding_by_any_name(built, tmp_path):
    """``resolve --runtime transformers --all --json`` lists a DoRA on an ``nn.Embedding`` named
    ``table`` (no name transformers gives an embedding) not runnable, with attach's reason: the
    LoRA method records the modules holding ``lora_embedding_A/B`` in the summary
    (``embedding_modules``), so the verdict does not hang on the module's name."""
    row = next(r for r in ROWS if r.id == "dora-embedding")
    b = built(row)
    args = ("--registry", f"sqlite:///{tmp_path / 'r.db'}", "--blobs", str(tmp_path / "blobs"))
    run_cli(*args, "publish", str(b.adapter), "--name", "acme/emb", "--version", "1.0.0",
            "--base", str(b.base), check=True)
    proc = run_cli(*args, "resolve", "--base", str(b.base), "--runtime", "transformers", "--all", "--json",
                   check=True)
    [hit] = json.loads(proc.stdout)
    assert (hit["name"], hit["verdict"]) == ("acme/emb", "incompatible"), hit
    assert any("table is an nn.Embedding" in r and "DoRA" in r for r in hit["reasons"]), hit["reasons"]
    proc = run_cli(*args, "resolve", "--base", str(b.base), "--runtime", "transformers", "--json", check=True)
    assert json.loads(proc.stdout) == []
