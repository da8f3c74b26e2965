"""HF ``transformers`` models (SegFormer, SAM) built the one way this package builds them: from a
dict of config fields (random weights), or from a saved model: a local folder, read offline, or a
hub id, downloaded only because the user named it. Errors are one :class:`InputError` each."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..errors import InputError

__all__ = ["HUB_ID", "from_config", "from_pretrained"]

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # "owner/name"


def from_config(model_cls: type, config_cls: type, config: Any, where: str) -> Any:
    """``model_cls(config_cls(**config))``, random weights; ``where`` names the config key."""
    if not isinstance(config, dict):
        raise InputError(where, f"expected a dict of {config_cls.__name__} fields, got {type(config).__name__}")
    try:
        return model_cls(config_cls(**config))
    except Exception as exc:  # TypeError for unknown fields, validation errors for bad values
        raise InputError(where, f"bad {config_cls.__name__}: {exc}") from None


def from_pretrained(model_cls: type, pretrained: Any, what: str, where: str) -> Any:
    """``model_cls.from_pretrained`` in float32 from a local folder (offline) or a hub id;
    ``what`` names the model in errors (e.g. ``"a SAM model"``), ``where`` the option."""
    if not isinstance(pretrained, (str, os.PathLike)):
        raise InputError(where, f"pretrained={pretrained!r}: expected a local folder or a hub id")
    path = Path(pretrained).expanduser()
    local = path.is_dir()
    if not local and not HUB_ID.fullmatch(str(pretrained)):
        raise InputError(pretrained, "not found: no such local folder (and not a hub id 'owner/name')")
    try:
        model = model_cls.from_pretrained(str(path) if local else str(pretrained), local_files_only=local)
    except (OSError, ValueError) as exc:
        raise InputError(pretrained, f"cannot load {what} from this {'local folder' if local else 'hub id'}: "
                                     f"{exc}") from None
    return model.float()
