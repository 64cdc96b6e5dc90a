"""The first resolve of a new architecture checks only the requirement sets that can fit it
(found by their probe through an index), not every set ever published; what resolve answers
is unchanged, reasons for --all included; registries from before the probe get it on
upgrade. SQLite and PostgreSQL."""

from __future__ import annotations

import json

from sqlalchemy import select, text

import adapterhub_sdk as ah
from adapterhub_sdk.registry import T_FITS, T_REQS
from adapterhub_sdk.registry.probes import base_keys, requirement_probe

from conftest import save_lora


def _fits_checked(reg, arch):
    with reg.engine.connect() as conn:
        return set(conn.execute(select(T_FITS.c.req_digest).where(T_FITS.c.arch_signature == arch)).scalars())


def test_new_arch_checks_only_candidate_sets(registry, base_dir, base_other_shape, lora_dir, tmp_path):
    other = save_lora(base_other_shape, tmp_path / "lora_other", seed=3)
    registry.publish(lora_dir, name="acme/fits", version="1.0.0", base=base_dir)
    registry.publish(other, name="acme/wider", version="1.0.0", base=base_other_shape)
    with registry.engine.connect() as conn:
        sets = dict(conn.execute(select(T_REQS.c.digest, T_REQS.c.probe)).all())
    assert len(sets) == 2 and all(sets.values())  # publish stored a probe for each set
    fp = ah.fingerprint(base_dir)
    assert [m.ref for m in registry.resolve(base=base_dir)] == ["acme/fits@1.0.0"]
    checked = _fits_checked(registry, fp.arch_signature)
    keys = set(base_keys(fp.shapes, fp.tied))
    assert checked == {d for d, p in sets.items() if p in keys} and len(checked) == 1  # the wider set: never read
    # --all still says why the other one does not fit, tensor by tensor
    everything = {m.ref: m for m in registry.resolve(base=base_dir, include_incompatible=True)}
    assert everything["acme/wider@1.0.0"].verdict == "incompatible"
    assert any(r.startswith("shape:") for r in everything["acme/wider@1.0.0"].reasons), everything["acme/wider@1.0.0"]
    # a second Registry (another process) finds the verdicts recorded, same answer
    again = ah.Registry.open(registry.url, blobs=tmp_path / "blobs")
    try:
        assert [m.ref for m in again.resolve(base=base_dir)] == ["acme/fits@1.0.0"]
    finally:
        again.close()
    # a set published later is seen by the memo (sets are counted)
    registry.publish(save_lora(base_dir, tmp_path / "lora_kv", seed=4, targets=("k_proj",)), name="acme/kv",
                     version="1.0.0", base=base_dir)
    assert sorted(m.ref for m in registry.resolve(base=base_other_shape)) == ["acme/wider@1.0.0"]
    assert sorted(m.ref for m in registry.resolve(base=base_dir)) == ["acme/fits@1.0.0", "acme/kv@1.0.0"]


def test_probe_is_a_key_of_every_base_the_set_fits():
    shapes = {"m.q.weight": (8, 4), "m.k.weight": (2, 4), "lm_head.weight": (10, 4)}
    keys = set(base_keys(shapes, {"m.tied.weight": "lm_head.weight"}))
    assert requirement_probe({"m.q.weight": [8, 4], "m.k.weight": [2, 4]}) in keys
    assert requirement_probe({"m.q.weight": [None, 4]}) == "m.q.weight"  # a wildcard: by name
    assert requirement_probe({"m.tied.weight": [10, 4]}) in keys  # tied names answer too
    assert requirement_probe({"m.q.weight": []}) in keys  # existence only
    assert requirement_probe({"@num_layers": [2]}) == "" and "" in keys  # facts only: every base
    assert requirement_probe({"m.q.weight": [16, 4]}) not in keys  # another width: not a candidate


def test_upgrade_gives_existing_sets_their_probe(registry_url, tmp_path):
    from test_migrations import _upgrade_to

    from adapterhub_sdk import db as dbmod

    _upgrade_to(registry_url, "0004")
    req = {"model.layers.0.self_attn.q_proj.weight": [32, 32]}
    engine = dbmod.make_engine(registry_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO requirement_sets (digest, body) VALUES ('d1', :b)"), {"b": json.dumps(req)})
    engine.dispose()
    _upgrade_to(registry_url, "head")
    engine = dbmod.make_engine(registry_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT probe FROM requirement_sets")).scalar() == requirement_probe(req)
    engine.dispose()
