import json

import pytest

from lmgolf.config import Config, load_config, load_preset, preset_names
from lmgolf.errors import LmgolfError


def test_all_presets_load_and_round_trip():
    assert {"pg-baseline", "s1-option-a", "nanogpt-shakespeare-char", "cpu-demo"} <= set(preset_names())
    for name in preset_names():
        cfg = load_preset(name)
        assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("override,fragment", [
    (["model.n_layerz=3"], "unknown config key 'model.n_layerz'"),
    (["nonsense=1"], "unknown config key 'nonsense'"),
    (["model.n_layer=abc"], "model.n_layer: expected int, got 'abc'"),
    (["model.n_layer=2.5"], "model.n_layer: expected int"),
    (["model.mlp=tanh"], "model.mlp: 'tanh' is not one of"),
    (["model.n_head=7"], "model.d_model and model.n_head"),
    (["model.n_kv_head=3"], "model.n_head and model.n_kv_head"),
    (["train.optimizer=sgd"], "train.optimizer"),
    (["n_layer"], "expected key=value"),
    (["model.rope_dims=3"], "model.rope_dims"),
    (["model.rope_dims=128"], "model.rope_dims"),
    (["model.positions=learned", "model.nope_every=2"], "positions=rope"),
    (["model.norm_position=middle"], "model.norm_position"),
])
def test_bad_overrides_name_the_field(override, fragment):
    with pytest.raises(LmgolfError, match=None) as e:
        load_config("cpu-demo", override)
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_preset_lists_known():
    with pytest.raises(LmgolfError, match="unknown preset 'nope'.*pg-baseline"):
        load_preset("nope")


def test_float_field_accepts_int_and_null_fields():
    cfg = load_config("cpu-demo", ["train.lr=1", "model.logit_softcap=null"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.model.logit_softcap is None


@pytest.mark.parametrize("field,value", [("ssm_layers", "1"), ("exit_layers", "2"), ("depth_pattern", "0")])
def test_one_element_list_fields_accept_an_int_override(field, value):
    overrides = [f"model.{field}={value}"] + (["model.n_layer=1"] if field == "depth_pattern" else [])
    cfg = load_config("cpu-demo", overrides)
    assert getattr(cfg.model, field) == value
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.model.ssm_blocks == ({1} if field == "ssm_layers" else set())
