"""Config: the schema of model, training and packing settings, its checks, presets and overrides.

The config layer imports no other lmgolf package: every stage may import it. The preset loader
(lmgolf.config.load) is re-exported lazily, so loading an artifact (the runner file) does without it.
"""

import importlib

from lmgolf.config.schema import Config, ModelConfig, PackPolicy, TrainConfig  # noqa: F401

_LOADER = ("PACK_POLICIES", "PRESET_DIR", "load_config", "load_preset", "pack_policy", "preset_names")


def __getattr__(name: str):
    if name in _LOADER:
        return getattr(importlib.import_module("lmgolf.config.load"), name)
    raise AttributeError(f"module 'lmgolf.config' has no attribute {name!r}")
