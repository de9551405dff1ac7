"""Config: the schema of model, training and packing settings, its checks, presets and overrides.

The config layer imports no other lmgolf package: every stage may import it.
"""

from lmgolf.config.load import (PACK_POLICIES, PRESET_DIR, load_config, load_preset, pack_policy,  # noqa: F401
                                preset_names)
from lmgolf.config.schema import Config, ModelConfig, PackPolicy, TrainConfig  # noqa: F401
