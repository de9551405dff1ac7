"""Study files (docs/studies.md): a base preset and data, arms (named override sets or a grid), seeds, a
budget per run, the metrics to collect and optionally the artifact to pack and score; read from TOML
(tomllib) or YAML (when pyyaml is installed) and checked field by field with one-line errors.

Every run's overrides apply in this order, later ones winning: the budget, the study's `overrides`, the
arm's, the seed (train.seed). Paths (out, data.path) are relative to the current folder.
"""

from __future__ import annotations

import itertools
import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from lmgolf.errors import LmgolfError

RUN_METRICS = ("val_loss", "val_bpb", "params", "train_flops", "tokens", "wall_time", "steps")
PACK_METRICS = ("artifact_bytes",)
ARTIFACT_METRICS = ("artifact_val_loss", "artifact_val_bpb")  # the packed artifact scored on the val split
METRICS = RUN_METRICS + PACK_METRICS + ARTIFACT_METRICS
TOP_KEYS = {"name", "preset", "out", "seeds", "overrides", "metrics", "baseline", "data", "budget", "arms", "grid", "pack"}
DATA_KEYS = {"path", "corpus", "tokenizer", "vocab_size", "val_fraction", "seed", "data_dir"}
BUDGET_KEYS = {"time_budget", "max_steps"}
PACK_KEYS = {"policy", "codec", "overrides", "budget", "evaluate"}
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=,+-]*$")  # arm and study names are folder names


@dataclass
class DataSpec:
    path: Path                          # the data folder the runs train on
    corpus: str | None = None           # when set, `path` is prepared from it if missing
    tokenizer: str | None = None
    vocab_size: int | None = None
    val_fraction: float = 0.05
    seed: int = 0
    data_dir: str | None = None


@dataclass
class PackSpec:
    policy: str | None = None           # a named packing policy (None: the run config's pack section)
    codec: str | None = None
    overrides: list[str] = field(default_factory=list)
    budget: int = 16_000_000            # bytes for artifact plus code; over it the run is still recorded
    evaluate: bool = True               # score the artifact on the val split

    def as_dict(self) -> dict:
        return {"policy": self.policy, "codec": self.codec, "overrides": list(self.overrides), "budget": self.budget,
                "evaluate": self.evaluate}


@dataclass
class RunSpec:
    index: int
    arm: str
    seed: int
    overrides: list[str]                # everything on top of the preset, in order
    folder: Path


@dataclass
class Study:
    path: Path
    name: str
    preset: str
    out: Path
    data: DataSpec
    seeds: list[int]
    arms: dict[str, list[str]]          # arm -> its overrides
    budget: dict[str, float]
    overrides: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=lambda: ["val_loss", "val_bpb"])
    pack: PackSpec | None = None
    baseline: str | None = None

    def runs(self) -> list[RunSpec]:
        """Every run, arm by arm (in the file's order) and seed by seed; the index is the run's --only number."""
        budget = [f"train.{k}={_format(v)}" for k, v in self.budget.items()]
        runs = []
        for arm, arm_overrides in self.arms.items():
            for seed in self.seeds:
                runs.append(RunSpec(len(runs), arm, seed, budget + self.overrides + arm_overrides + [f"train.seed={seed}"],
                                    self.out / arm / f"seed-{seed}"))
        return runs


def load_study(path: str | Path) -> Study:
    """Reads and checks a study file (.toml, or .yaml/.yml with pyyaml)."""
    path = Path(path)
    raw = _read(path)
    return _Checker(path).study(raw)


def _read(path: Path) -> dict:
    if path.is_dir():
        raise LmgolfError(f"{path}: is a folder, not a study file")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LmgolfError(f"{path}: no such study file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LmgolfError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise LmgolfError(f"{path}: YAML study files need pyyaml (pip install pyyaml), or write it as TOML") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise LmgolfError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise LmgolfError(f"{path}: not valid TOML ({e})") from None
    if not isinstance(data, dict):
        raise LmgolfError(f"{path}: expected a table of study fields, got {type(data).__name__}")
    return data


def _format(value) -> str:
    """A study file's value as a `key=value` override writes it (parsed back by lmgolf.config's parse_value)."""
    if isinstance(value, str):
        return value
    return json.dumps(value)


class _Checker:
    def __init__(self, path: Path):
        self.path = path

    def fail(self, field_name: str, message: str):
        raise LmgolfError(f"{self.path}: field {field_name}: {message}")

    def table(self, value, name: str, keys: set[str]) -> dict:
        if not isinstance(value, dict):
            self.fail(name, f"expected a table, got {type(value).__name__}")
        unknown = sorted(set(value) - keys)
        if unknown:
            self.fail(f"{name}.{unknown[0]}" if name else unknown[0], f"unknown field (known: {', '.join(sorted(keys))})")
        return value

    def typed(self, value, name: str, kind, what: str):
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            self.fail(name, f"expected {what}, got {value!r}")
        return value

    def number(self, value, name: str) -> float:
        self.typed(value, name, (int, float), "a number")
        if value < 0:
            self.fail(name, f"must be at least 0, got {value}")
        return value

    def study(self, raw: dict) -> Study:
        self.table(raw, "", TOP_KEYS)
        name = self.typed(raw.get("name", self.path.stem), "name", str, "a string")
        if not NAME.match(name):
            self.fail("name", f"{name!r} must be a folder name (letters, digits, _ . = , + -)")
        if "preset" not in raw:
            self.fail("preset", "missing (the base preset, e.g. preset = \"cpu-demo\")")
        preset = self.preset(raw["preset"])
        out = Path(self.typed(raw.get("out", f"runs/{name}"), "out", str, "a folder path"))
        overrides = self.overrides(raw.get("overrides", []), "overrides", preset)
        arms = self.arms(raw, preset)
        baseline = raw.get("baseline")
        if baseline is not None and baseline not in arms:
            self.fail("baseline", f"no arm {baseline!r} (arms: {', '.join(arms)})")
        pack = self.pack(raw["pack"]) if "pack" in raw else None
        return Study(path=self.path, name=name, preset=preset, out=out, data=self.data(raw.get("data")),
                     seeds=self.seeds(raw.get("seeds", [0])), arms=arms, budget=self.budget(raw.get("budget")),
                     overrides=overrides, metrics=self.metrics(raw.get("metrics", ["val_loss", "val_bpb"]), pack),
                     pack=pack, baseline=baseline)

    def preset(self, value) -> str:
        from lmgolf.config import preset_names
        self.typed(value, "preset", str, "a preset name")
        if value not in preset_names():
            self.fail("preset", f"no preset {value!r} (lmgolf presets lists them)")
        return value

    def overrides(self, value, name: str, preset: str) -> list[str]:
        """A list of "key=value" strings or a table {key: value}, its keys checked against the config."""
        from lmgolf.config import load_preset
        from lmgolf.config.load import apply_overrides
        if isinstance(value, dict):
            items = [f"{k}={_format(v)}" for k, v in value.items()]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            items = list(value)
        else:
            self.fail(name, f"expected a list of \"key=value\" strings or a table of key = value, got {value!r}")
        try:
            apply_overrides(load_preset(preset).to_dict(), items)
        except LmgolfError as e:
            self.fail(name, str(e))
        if any(item.split("=", 1)[0].strip() in ("train.seed", "seed") for item in items):
            self.fail(name, "sets train.seed; the study's seeds field sets it")
        return items

    def arms(self, raw: dict, preset: str) -> dict[str, list[str]]:
        arms = {}
        for arm, value in self.typed(raw.get("arms", {}), "arms", dict, "a table of arm = overrides").items():
            if not NAME.match(arm):
                self.fail(f"arms.{arm}", "an arm's name must be a folder name (letters, digits, _ . = , + -)")
            nested = [k for k, v in value.items() if isinstance(v, list)] if isinstance(value, dict) else []
            if nested:  # TOML read `a.b = [...]` as a table a holding an arm b
                self.fail(f"arms.{arm}", f"a dot in a bare TOML key nests tables; quote an arm's name that holds one: "
                                         f"\"{arm}.{nested[0]}\" = [...]")
            arms[arm] = self.overrides(value, f"arms.{arm}", preset)
        for arm, items in self.grid(raw.get("grid"), preset).items():
            if arm in arms:
                self.fail("grid", f"its arm {arm!r} is also named in arms")
            arms[arm] = items
        if not arms:
            arms = {"base": []}
        return arms

    def grid(self, value, preset: str) -> dict[str, list[str]]:
        """Every combination of the grid's values, named `key=value,...` after the keys' last parts."""
        if value is None:
            return {}
        self.typed(value, "grid", dict, "a table of key = [values]")
        if not value:
            self.fail("grid", "empty (give at least one key = [values])")
        for key, values in value.items():
            if not isinstance(values, list) or not values:
                self.fail(f"grid.{key}", f"expected a non-empty list of values, got {values!r}")
            self.overrides({key: values[0]}, f"grid.{key}", preset)
        short = [k.rsplit(".", 1)[-1] for k in value]
        labels = short if len(set(short)) == len(short) else list(value)
        arms = {}
        for combo in itertools.product(*value.values()):
            name = ",".join(f"{label}={_format(v)}" for label, v in zip(labels, combo))
            if not NAME.match(name):
                self.fail("grid", f"the arm name {name!r} is not a folder name; use plain values")
            arms[name] = [f"{k}={_format(v)}" for k, v in zip(value, combo)]
        return arms

    def seeds(self, value) -> list[int]:
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                self.fail("seeds", f"a count of seeds must be at least 1, got {value}")
            return list(range(value))
        if not isinstance(value, list) or not value or not all(isinstance(s, int) and not isinstance(s, bool)
                                                                 and s >= 0 for s in value):
            self.fail("seeds", f"expected a list of seeds (integers >= 0) or a count, got {value!r}")
        if len(set(value)) != len(value):
            self.fail("seeds", f"repeats a seed: {value}")
        return list(value)

    def budget(self, value) -> dict[str, float]:
        if value is None:
            self.fail("budget", "missing (a [budget] table with time_budget (seconds) and/or max_steps)")
        self.table(value, "budget", BUDGET_KEYS)
        budget = {"time_budget": self.number(value.get("time_budget", 0), "budget.time_budget"),
                  "max_steps": self.number(value.get("max_steps", 0), "budget.max_steps")}
        if not isinstance(budget["max_steps"], int):
            self.fail("budget.max_steps", f"expected an integer, got {budget['max_steps']!r}")
        if not any(budget.values()):
            self.fail("budget", "set time_budget (seconds) and/or max_steps above 0")
        return budget

    def data(self, value) -> DataSpec:
        if value is None:
            self.fail("data", "missing (a [data] table with path, and corpus + tokenizer to prepare it)")
        self.table(value, "data", DATA_KEYS)
        if "path" not in value:
            self.fail("data.path", "missing (the data folder; with corpus and tokenizer it is prepared when missing)")
        spec = DataSpec(path=Path(self.typed(value["path"], "data.path", str, "a folder path")))
        for key in ("corpus", "tokenizer", "data_dir"):
            if key in value:
                setattr(spec, key, self.typed(value[key], f"data.{key}", str, "a string"))
        if (spec.corpus is None) != (spec.tokenizer is None):
            self.fail("data.tokenizer" if spec.tokenizer is None else "data.corpus",
                      "missing (corpus and tokenizer go together)")
        if "vocab_size" in value:
            spec.vocab_size = self.typed(value["vocab_size"], "data.vocab_size", int, "an integer")
        if "val_fraction" in value:
            spec.val_fraction = self.typed(value["val_fraction"], "data.val_fraction", (int, float), "a number")
        if "seed" in value:
            spec.seed = self.typed(value["seed"], "data.seed", int, "an integer")
        return spec

    def metrics(self, value, pack: PackSpec | None) -> list[str]:
        if not isinstance(value, list) or not value or not all(isinstance(m, str) for m in value):
            self.fail("metrics", f"expected a non-empty list of metric names, got {value!r}")
        for m in value:
            if m not in METRICS:
                self.fail("metrics", f"unknown metric {m!r} (known: {', '.join(METRICS)})")
            if m in PACK_METRICS + ARTIFACT_METRICS and pack is None:
                self.fail("metrics", f"{m} needs a [pack] table")
            if m in ARTIFACT_METRICS and not pack.evaluate:
                self.fail("metrics", f"{m} needs pack.evaluate = true")
        return list(value)

    def pack(self, value) -> PackSpec:
        self.table(value, "pack", PACK_KEYS)
        spec = PackSpec()
        for key in ("policy", "codec"):
            if key in value:
                setattr(spec, key, self.typed(value[key], f"pack.{key}", str, "a string"))
        if "overrides" in value:
            items = value["overrides"]
            if isinstance(items, dict):
                items = [f"{k}={_format(v)}" for k, v in items.items()]
            if not isinstance(items, list) or not all(isinstance(v, str) and "=" in v for v in items):
                self.fail("pack.overrides", f"expected a list of \"field=value\" strings, got {value['overrides']!r}")
            spec.overrides = list(items)
        if "budget" in value:
            spec.budget = self.typed(value["budget"], "pack.budget", int, "an integer (bytes)")
        if "evaluate" in value:
            spec.evaluate = self.typed(value["evaluate"], "pack.evaluate", bool, "true or false")
        from lmgolf.config import PackPolicy, pack_policy
        try:
            pack_policy(PackPolicy(), spec.policy, spec.overrides + ([f"codec={spec.codec}"] if spec.codec else []))
        except LmgolfError as e:
            self.fail("pack", str(e))
        return spec
