"""String-keyed registries (timm style) for methods, 2D and 3D networks.

Heavy imports are made inside the registered builder, never at registration time: MONAI (a core
dependency, but slow to import) and the optional transformers / peft (extra ``hf``) and einops
(extra ``swinunetr``).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

from .errors import InputError


class Registry:
    """Maps a name to a builder (a class or a function returning an object)."""

    def __init__(self, kind: str, modules: tuple[str, ...] = ()):
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}
        self._modules = modules  # imported lazily, on first lookup, to fill the registry
        self._loaded = False

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._builders and self._builders[name] is not fn:
                raise KeyError(f"{self.kind} {name!r} registered twice")
            self._builders[name] = fn
            return fn

        return deco

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for m in self._modules:
                importlib.import_module(m)

    def names(self) -> list[str]:
        self._load()
        return sorted(self._builders)

    def get(self, name: str) -> Callable[..., Any]:
        self._load()
        if name not in self._builders:
            raise InputError(name, f"unknown {self.kind}; choose one of {', '.join(self.names())}")
        return self._builders[name]

    def build(self, name: str, **kwargs: Any) -> Any:
        return self.get(name)(**kwargs)


NETS3D = Registry("3D network", ("semi3d.models.nets3d", "semi3d.models.vnet", "semi3d.models.monai_nets",
                                 "semi3d.models.ad_net", "semi3d.models.ensemble"))
NETS2D = Registry("2D network", ("semi3d.models.seg2d", "semi3d.models.segformer2d", "semi3d.models.unetpp2d"))
METHODS = Registry(
    "method",
    (
        "semi3d.methods.supervised",
        "semi3d.methods.supervised2d",
        "semi3d.methods.mn",
        "semi3d.methods.mean_teacher",
        "semi3d.methods.ua_mt",
        "semi3d.methods.cps",
        "semi3d.methods.bcp",
        "semi3d.methods.urpc",
        "semi3d.methods.ad",
    ),
)
