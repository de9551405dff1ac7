"""Named presets (JSON files in lmgolf/config/presets), named packing policies, and `key=value` overrides."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from lmgolf.config.fields import build, field_types, parse_value
from lmgolf.config.schema import Config, ModelConfig, PackPolicy, TrainConfig
from lmgolf.errors import LmgolfError

PRESET_DIR = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name: str) -> Config:
    path = PRESET_DIR / f"{name}.json"
    if not path.is_file():
        raise LmgolfError(f"unknown preset {name!r} (known: {', '.join(preset_names())})")
    data = json.loads(path.read_text())
    data["preset"] = name
    return Config.from_dict(data, source=str(path))


# Named packing policies (`lmgolf pack --policy NAME`); each is a set of pack.* fields over the defaults.
PACK_POLICIES = {
    "int8": {},
    "int6-emb8": {"default_storage": "int6-row", "group_storage": {"embedding": "int8-row"}},
    "int5-mlp": {"default_storage": "int6-row", "group_storage": {"embedding": "int8-row", "mlp": "int5-row"}},
    "ternary": {"default_storage": "ternary", "group_storage": {"embedding": "int8-row"}},
    "gptq-int6": {"default_storage": "int6-row", "group_storage": {"embedding": "int8-row"}, "gptq": True},
    "gptq-int4": {"default_storage": "int4-row", "group_storage": {"embedding": "int8-row"}, "gptq": True},
}


def pack_policy(base: PackPolicy, name: str | None = None, overrides: list[str] = ()) -> PackPolicy:
    """base, replaced by a named policy if given (its codec kept), then `key=value` overrides of pack.* fields."""
    data = dataclasses.asdict(base)
    if name is not None:
        if name not in PACK_POLICIES:
            raise LmgolfError(f"unknown packing policy {name!r} (known: {', '.join(PACK_POLICIES)})")
        data = {**dataclasses.asdict(PackPolicy()), "codec": base.codec, **PACK_POLICIES[name]}
    for item in overrides:
        if "=" not in item:
            raise LmgolfError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip().removeprefix("pack.")
        if key not in field_types(PackPolicy):
            raise LmgolfError(f"unknown pack policy key {key!r} (known: {', '.join(field_types(PackPolicy))})")
        data[key] = parse_value(raw)
    policy = build(PackPolicy, data, "pack policy")
    policy.validate()
    return policy


def load_config(preset: str, overrides: list[str] = ()) -> Config:
    """A preset with `section.key=value` overrides (the section may be left out when the key is unique)."""
    data = apply_overrides(load_preset(preset).to_dict(), overrides)
    return Config.from_dict(data, source=f"preset {preset} with overrides")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """A config dict (as Config.to_dict gives) with `section.key=value` items set in place, and returned."""
    for item in overrides:
        if "=" not in item:
            raise LmgolfError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        section, name = _locate(key.strip())
        data[section][name] = parse_value(raw)
    return data


def _locate(key: str) -> tuple[str, str]:
    sections = {"model": ModelConfig, "train": TrainConfig, "pack": PackPolicy}
    if "." in key:
        section, name = key.split(".", 1)
        if section in sections and name in field_types(sections[section]):
            return section, name
    else:
        hits = [s for s, c in sections.items() if key in field_types(c)]
        if len(hits) == 1:
            return hits[0], key
    known = [f"{s}.{n}" for s, c in sections.items() for n in field_types(c)]
    raise LmgolfError(f"unknown config key {key!r} (known: {', '.join(known)})")
