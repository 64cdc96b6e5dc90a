"""The requirement probes live in :mod:`adapterhub_sdk.probes` (a leaf module, so that the
resolve read path can use them without loading the registry); kept importable from here."""

from ..probes import PROBE_MAX, base_keys, requirement_probe, shape_key

__all__ = ["PROBE_MAX", "base_keys", "requirement_probe", "shape_key"]
