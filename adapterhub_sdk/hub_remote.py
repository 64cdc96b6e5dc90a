"""The Hugging Face Hub as a :class:`~adapterhub_sdk.interfaces.Remote` (``hf://``), a
built-in plugin registered like third-party ones. :class:`HubRemote` adapts
:class:`~adapterhub_sdk.hub.HubClient`; the Hub client (and huggingface_hub) load only
when a Hub URL is used."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .hookspecs import hookimpl

if TYPE_CHECKING:
    from .interfaces import Remote


class HubRemote:
    """``hf://ORG/REPO[@SPEC]``: versions are tags, a push is one commit stating its parent."""

    scheme = "hf"

    def __init__(self, *, endpoint: str | None = None, token: str | None = None):
        self.endpoint = endpoint
        self.token = token

    def _client(self) -> Any:
        from .hub import HubClient

        return HubClient(endpoint=self.endpoint, token=self.token)

    def push(self, registry: Any, ref: str, to: str, *, private: bool | None = None) -> Any:
        return self._client().push(registry, ref, to, private=private)

    def pull(self, registry: Any, ref: str, dest: str | os.PathLike[str] | None = None, *, base: Any = None,
             overwrite: bool = False, name: str | None = None, require_signed: Any = None) -> Any:
        return self._client().pull(registry, ref, base=base, dest=dest, overwrite=overwrite, name=name,
                                   require_signed=require_signed)

    def versions(self, url: str) -> Mapping[Any, str]:
        from .hub import parse_hub_ref

        return self._client().versions(parse_hub_ref(url).repo)

    def resolve(self, base: Any, *, task: str | None = None, author: str | None = None,
                limit: int = 50) -> list[dict[str, Any]]:
        return self._client().resolve(base, task=task, author=author, limit=limit)

    def identify_base(self, registry: Any, url: str) -> Any:
        from .hub import parse_hub_ref

        ref = parse_hub_ref(url)
        return self._client().identify_base(registry, ref.repo, ref.spec)

    def fetch_base(self, url: str) -> Path:
        from huggingface_hub import snapshot_download

        from .hub import _hub_errors, parse_hub_ref

        ref = parse_hub_ref(url)  # for a base, the part after @ is a git revision (branch, tag, commit)
        with _hub_errors(url):
            return Path(snapshot_download(ref.repo, revision=ref.spec or "main", endpoint=self.endpoint,
                                          token=self.token))

    def model_id(self, url: str) -> str:
        from .hub import parse_hub_ref

        return parse_hub_ref(url).repo


@hookimpl
def register_remotes(register: Callable[[str, Callable[[str], Any]], None]) -> None:
    register("hf", lambda url: HubRemote())


if TYPE_CHECKING:  # mypy checks HubRemote against the protocol
    _remote: type[Remote] = HubRemote
