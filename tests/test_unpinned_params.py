"""LoRA on an ``nn.Parameter`` (PEFT's ``target_parameters``) published without a base: the
registry records every shape of the parameter that the adapter's tensors admit (PEFT's
``ParamWrapper``: ``[out, in]``, or ``[experts, out, in]`` / ``[experts, in, out]`` with A
``[r * experts, in]``), so resolve says ``structural`` only where the base's parameter has one
of them. It recorded ``[]`` (existence only): ``structural`` on any base holding a parameter of
that name, whatever its shape or number of experts.

Real PEFT adapters (the rows and tiny bases of tests/test_method_table.py, and a GPT-OSS
mixture of experts built from a config), a real SQLite registry, the CLI in a subprocess."""

from __future__ import annotations

import json
import warnings

import pytest
import test_method_table
import torch
from test_method_table import (
    ROWS,
    Base,
    Experts,
    ExpertsNet,
    ParamNet,
    Row,
    _load_base,
    _out,
    _save_base,
    build,
    cfg,
)

import adapterhub_sdk as ah
from adapterhub_sdk.methods.base import check_requirements, refines

from conftest import run_cli

ROW = {r.id: r for r in ROWS}
built = test_method_table.built  # the fixture: each row's base and adapter, built once per module


def _gpt_oss(experts: int = 4):
    from transformers import GptOssConfig, GptOssForCausalLM

    config = GptOssConfig(vocab_size=64, hidden_size=16, intermediate_size=8, num_hidden_layers=1,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=8, num_local_experts=experts,
                          num_experts_per_tok=2, max_position_embeddings=32, layer_types=["full_attention"],
                          rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    return GptOssForCausalLM(config).eval()


#: GPT-OSS keeps its experts as (experts, in, out) parameters and says ``is_transposed``;
#: the other base has the same layers with 2 experts instead of 4
MOE = Base(_gpt_oss, lambda: _gpt_oss(2), lambda: torch.tensor([[1, 5, 9, 3, 7], [4, 8, 2, 30, 0]]), hf=True)
MOE_ROW = Row("lora-moe-down-proj", MOE, cfg("LoraConfig", r=2, lora_alpha=4, target_modules=[],
                                             target_parameters=["mlp.experts.down_proj"]), "lora", "down_proj")
DOWN = "model.layers.0.mlp.experts.down_proj"


def _more_experts(path):
    """The 3-D row's base with 4 experts instead of 3 (same in and out sizes)."""
    torch.manual_seed(2)
    net = ExpertsNet()
    net.experts = Experts(4, 8, 6)
    return _save_base(net.eval(), path, False)


def _wider_param(path):
    torch.manual_seed(2)
    return _save_base(ParamNet(cin=12).eval(), path, False)


@pytest.mark.parametrize(("row_id", "param", "misfit"), [
    ("lora-target-parameters", "mix.w", _wider_param),
    ("lora-target-parameters-3d", "experts.w", _more_experts),
])
def test_an_unpinned_parameter_target_is_structural_only_where_its_shape_fits(row_id, param, misfit, built,
                                                                             tmp_path):
    row = ROW[row_id]
    b = built(row)
    reg = ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=tmp_path / "blobs")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ah.UnpinnedPublishWarning)
            published = reg.publish(b.adapter, name="acme/param", version="1.0.0")  # no base
        assert published.manifest.requirements[param], published.manifest.requirements  # shapes, not existence
        [m] = reg.resolve(b.base)
        assert (m.name, m.verdict) == ("acme/param", "structural"), (m.verdict, m.reasons)
        # other input features (the table's other base), more experts or a wider parameter
        for other in (b.other, misfit(tmp_path / "misfit")):
            assert reg.resolve(other) == []
            [bad] = reg.resolve(other, include_incompatible=True)
            assert bad.verdict == "incompatible", bad
            assert any(r.startswith(f"shape: {param} is ") for r in bad.reasons), bad.reasons
        pulled = reg.pull("acme/param@1.0.0", tmp_path / "pulled")
    finally:
        reg.close()
    # what it resolved to loads and computes what PEFT computed when it was trained
    model = ah.load_adapter(_load_base(row.base, b.base), pulled)
    assert torch.equal(_out(model, row.base.input()), b.reference)


def test_the_cli_resolves_an_unpinned_expert_lora_by_its_number_of_experts(built, tmp_path):
    b = built(MOE_ROW)
    args = ("--registry", f"sqlite:///{tmp_path / 'r.db'}", "--blobs", str(tmp_path / "blobs"))
    run_cli(*args, "publish", str(b.adapter), "--name", "acme/moe", "--version", "1.0.0", check=True)
    proc = run_cli(*args, "resolve", "--base", str(b.base), "--json", check=True)
    assert [(m["name"], m["verdict"]) for m in json.loads(proc.stdout)] == [("acme/moe", "structural")]
    proc = run_cli(*args, "resolve", "--base", str(b.other), "--json", check=True)
    assert json.loads(proc.stdout) == []
    proc = run_cli(*args, "resolve", "--base", str(b.other), "--all", "--json", check=True)
    [bad] = json.loads(proc.stdout)
    assert bad["verdict"] == "incompatible", bad
    assert bad["reasons"] == [f"shape: {DOWN} is [2, 8, 16] in the base, the adapter needs [4, 8, 16] or [4, 16, 8]"]
    pulled = tmp_path / "pulled"
    run_cli(*args, "pull", "acme/moe@1.0.0", "--out", str(pulled), check=True)
    model = ah.load_adapter(_load_base(MOE, b.base), pulled)
    assert torch.equal(_out(model, MOE.input()), b.reference)


def test_a_pinned_expert_lora_refines_what_its_files_say(built):
    """Publishing with the base records the base's own shape, one of those the files admit
    (a Hub or OCI import checks exactly this of a manifest against its files)."""
    b = built(MOE_ROW)
    pkg = ah.pack(b.adapter)
    derived = pkg.requirements
    fp = ah.fingerprint(b.base)
    pkg.require_base(fp)
    assert pkg.requirements == {DOWN: [4, 8, 16]}
    assert refines(derived, pkg.requirements)
    assert not refines(derived, {DOWN: [2, 8, 16]})
    with pytest.raises(ah.IncompatibleAdapterError, match=r"down_proj is \[2, 8, 16\] in the base"):
        pkg.require_base(ah.fingerprint(b.other))


def test_records_from_before_keep_their_verdict(built):
    """A requirement set stored by an SDK before this one (``[]`` for a parameter target)
    still parses and still checks existence only, as it did: never more permissive, and a
    manifest carrying it still imports (its claim stays what that SDK derived)."""
    b = built(MOE_ROW)
    derived = ah.pack(b.adapter).requirements
    old = {DOWN: []}
    assert refines(derived, old)
    assert check_requirements(old, ah.fingerprint(b.other)) == []  # as before: it exists
    assert check_requirements(derived, ah.fingerprint(b.other)) != []  # what is recorded now


def test_a_rank_pattern_applies_to_a_parameter_target_as_peft_applies_it(tmp_path):
    """PEFT picks a parameter target's rank with its current pattern rule only (parameter
    targets postdate the pre-0.14 rule): the rank r the old rule would give is no shape PEFT
    builds, so a base with twice the experts (A's rows / r) must not be called structural."""
    from peft import LoraConfig, PeftModel, get_peft_model

    def net(experts: int) -> ExpertsNet:
        torch.manual_seed(0)
        n = ExpertsNet()
        n.experts = Experts(experts, 8, 6)
        return n.eval()

    conf = LoraConfig(r=2, lora_alpha=4, target_modules=[], target_parameters=["experts.w"],
                      rank_pattern={"experts.w": 4})
    get_peft_model(net(3), conf).save_pretrained(tmp_path / "ad")
    with ah.Registry.open(f"sqlite:///{tmp_path / 'r.db'}", blobs=tmp_path / "b") as reg:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reg.publish(tmp_path / "ad", name="acme/rp", version="1.0.0")
        six = _save_base(net(6), tmp_path / "six", False)
        with pytest.raises(Exception, match="size mismatch"):  # what PEFT says on that base
            PeftModel.from_pretrained(net(6), tmp_path / "ad")
        (hit,) = reg.resolve(six, include_incompatible=True)
        assert hit.verdict == "incompatible", hit
        three = _save_base(net(3), tmp_path / "three", False)
        assert [m.verdict for m in reg.resolve(three)] == ["structural"]


def test_an_imported_claim_looser_than_its_files_is_checked_by_the_files(tmp_path):
    """An OCI artifact whose manifest claims existence only (``[]``, as an SDK before
    ``one_of`` wrote it) where its files give the expert shapes is still imported (refines
    keeps old claims importable), but the catalog checks it by what the files say: resolve on
    a base with another number of experts says incompatible, not structural."""
    from ociserver import REGISTRY, SKIP_REASON, start_registry

    from adapterhub_sdk.oci.client import OciClient, sha256_digest
    from adapterhub_sdk.oci.remote import OciRemote

    if REGISTRY is None:
        pytest.skip(SKIP_REASON)
    b = build(ROW["lora-target-parameters-3d"], tmp_path / "b")
    srv = start_registry(tmp_path / "oci")
    pub = ah.Registry.open(f"sqlite:///{tmp_path / 'pub.db'}", blobs=tmp_path / "pb")
    other = ah.Registry.open(f"sqlite:///{tmp_path / 'o.db'}", blobs=tmp_path / "ob")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            honest = pub.publish(b.adapter, name="acme/moe", version="1.0.0").manifest.requirements
        assert any(isinstance(v, dict) for v in honest.values()), honest
        OciRemote(insecure=True).push(pub, "acme/moe@1.0.0", f"oci://{srv.host}/t/src")
        with OciClient(srv.host, insecure=True) as c:  # the same artifact, its config claiming [] everywhere
            doc = json.loads(c.get_manifest("t/src", "1.0.0")[0])
            conf = json.loads(c.fetch_small("t/src", doc["config"]["digest"], 1 << 20))
            conf["requirements"] = {k: [] for k in conf["requirements"]}
            conf.pop("digest", None)
            raw = json.dumps(conf, sort_keys=True, separators=(",", ":")).encode()
            for layer in doc["layers"]:
                c.push_blob("t/loose", layer["digest"], layer["size"], c.fetch_small("t/src", layer["digest"], 1 << 30))
            c.push_blob("t/loose", sha256_digest(raw), len(raw), raw)
            doc["config"] = {**doc["config"], "digest": sha256_digest(raw), "size": len(raw)}
            doc["annotations"].pop("io.adapterhub.manifest.digest", None)
            c.put_manifest("t/loose", "1.0.0", json.dumps(doc).encode())
        OciRemote(insecure=True).pull(other, f"oci://{srv.host}/t/loose:1.0.0")
        assert all(v == [] for v in other.show("acme/moe@1.0.0").manifest.requirements.values())  # kept as claimed
        misfit = _more_experts(tmp_path / "misfit")
        (hit,) = other.resolve(misfit, include_incompatible=True)
        assert hit.verdict == "incompatible", hit
        assert [m.verdict for m in other.resolve(b.base)] == ["structural"]
    finally:
        pub.close(), other.close(), srv.stop()
