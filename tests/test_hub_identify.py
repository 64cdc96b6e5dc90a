"""Against olah (a real server for huggingface_hub): ``hf://ORG/MODEL`` is identified from the
weight files from_pretrained loads, as a local fingerprint records them. A repo holding an
adapter beside the base weights is refused (from_pretrained applies it); a repo holding the
registered base's ``model.safetensors`` plus a file transformers does not load
(``consolidated.safetensors``) is still that base.

Before: every top-level ``*.safetensors`` keyed the lookup, and adapter files were not
looked at: a repo with the base's weights and an adapter was called the base (its adapters
exact), and the base with an extra file beside it was never identified."""

from __future__ import annotations

import pytest
from hubserver import hub_env, hub_server, make_hub_repo, unique_repo_id  # noqa: F401

import adapterhub_sdk as ah
from adapterhub_sdk.hub import HubClient
from adapterhub_sdk.layouts import AmbiguousCheckpointError


def test_the_base_is_identified_by_the_files_that_load(hub_env, base_dir, lora_dir_b):  # noqa: F811
    base_files = {p.name: p.read_bytes() for p in base_dir.iterdir() if p.is_file()}
    with ah.Registry.open() as reg:
        fp = reg.register_base(base_dir, file_digests=True)
        extra = make_hub_repo(hub_env.mirrors, unique_repo_id("extra"),
                              {**base_files, "consolidated.safetensors": base_files["model.safetensors"] + b""})
        assert HubClient().identify_base(reg, extra.repo_id).digest == fp.digest
        adapter = {n: (lora_dir_b / n).read_bytes() for n in ("adapter_config.json", "adapter_model.safetensors")}
        mixed = make_hub_repo(hub_env.mirrors, unique_repo_id("mixed"), {**base_files, **adapter})
        with pytest.raises(AmbiguousCheckpointError, match="holds an adapter"):
            HubClient().identify_base(reg, mixed.repo_id)
