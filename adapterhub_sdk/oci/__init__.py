"""OCI registries as a remote (``oci://HOST[:PORT]/REPOSITORY``): :mod:`.refs` (URLs, tags,
media types), :mod:`.client` (the distribution HTTP API, Docker credentials) and
:mod:`.remote` (:class:`~.remote.OciRemote`, the built-in plugin)."""
