"""Put an adapter directory on a model: the method plugin's ``apply`` when it has one
(methods PEFT does not know), PEFT otherwise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import AdapterFormatError
from .methods.base import detect_method


def load_adapter(model: Any, path: str | Path, *, adapter_name: str = "default") -> Any:
    """Load the adapter at ``path`` (as pulled) onto ``model`` and return the model to use."""
    p = Path(path)
    try:
        config = json.loads((p / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AdapterFormatError(f"{p}: no readable adapter_config.json ({exc})") from exc
    method, _ = detect_method(config)
    try:
        return method.apply(model, str(p), config, adapter_name)
    except NotImplementedError:
        pass
    from peft import PeftModel

    if isinstance(model, PeftModel):
        model.load_adapter(str(p), adapter_name=adapter_name)
        return model
    return PeftModel.from_pretrained(model, str(p), adapter_name=adapter_name)
