"""Hook specifications. Plugins implement these with ``@adapterhub_sdk.hookimpl``.

Built-in behaviour (the LoRA family, the generic PEFT method) is registered through the
same plugin manager as third-party plugins, so the core never special-cases a method.

A plugin that raises in a ``register_*`` hook contributes nothing from that hook and one that
raises in ``after_publish``/``after_pull`` does not fail the operation: both are a
:class:`~adapterhub_sdk.plugins.PluginWarning` naming the plugin. ``validate_publish`` is a
policy: an exception there refuses the publish (see :mod:`adapterhub_sdk.plugins`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from .interfaces import BlobStorage, Remote
    from .manifest import Manifest
    from .methods.base import AdapterMethod
    from .package import AdapterPackage
    from .runtime import RuntimeBackend

hookspec = pluggy.HookspecMarker("adapterhub")
hookimpl = pluggy.HookimplMarker("adapterhub")


@hookspec
def register_methods(register: Callable[[AdapterMethod], None]) -> None:
    """Called once when plugins load. Call ``register(method)`` for each
    :class:`~adapterhub_sdk.methods.base.AdapterMethod` the plugin provides. Methods are
    asked in registration order, third-party plugins first, to ``detect`` an adapter config;
    the first that claims it owns validation and description of that adapter. ``detect``
    must not raise: a method whose ``detect`` raises is skipped, with a warning."""


@hookspec
def register_runtimes(register: Callable[[RuntimeBackend], None]) -> None:
    """Called when runtimes are first listed. Call ``register(backend)`` for each
    :class:`~adapterhub_sdk.runtime.RuntimeBackend` (a name, its limits and a ``check``).
    The first backend registered under a name wins; third-party plugins are asked first."""


@hookspec
def register_storage(register: Callable[[str, Callable[[str], BlobStorage]], None]) -> None:
    """Called when a blob store is opened by URL. Call ``register(scheme, factory)``;
    ``factory(url)`` returns a :class:`~adapterhub_sdk.interfaces.BlobStorage` (``put_file``,
    ``copy_verified``, ``verify``, ``size``, ``iter_digests``, ``age``, ``delete``,
    ``clean_temp``), optionally also a ``StagingBlobStorage`` or ``QuarantiningBlobStorage``.
    The built-in ``file`` scheme is the local store."""


@hookspec
def register_remotes(register: Callable[[str, Callable[[str], Remote]], None]) -> None:
    """Called when a remote registry URL is used (pull, push, a base given as a URL). Call
    ``register(scheme, factory)``; ``factory(url)`` returns a
    :class:`~adapterhub_sdk.interfaces.Remote`. The first factory registered for a scheme
    wins, third-party plugins first. Built-in: ``hf`` (the Hugging Face Hub)."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Called when the CLI starts. Add ``click`` commands or groups to ``cli``."""


@hookspec
def validate_publish(manifest: Manifest, package: AdapterPackage) -> str | None:
    """Called before anything is written for a publish. Return a reason (one line) to
    reject it, or None to accept. Every plugin is asked; any reason rejects."""


@hookspec
def after_publish(manifest: Manifest, created: bool) -> None:
    """Called after a version is committed (``created`` is False for an identical re-publish)."""


@hookspec
def after_pull(manifest: Manifest, path: Any) -> None:
    """Called after a version has been written, verified, to ``path``."""
