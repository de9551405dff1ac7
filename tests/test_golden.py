"""The foundation presets must keep building the same weights from the same seed and giving the same
logits: new options default to off. Regenerate (only for an intended change) with
`python tests/test_golden.py`."""

import json
from pathlib import Path

import pytest
import torch

from lmgolf.config import load_preset
from lmgolf.model.gpt import GPT

GOLDEN = Path(__file__).parent / "golden" / "foundation.json"
PRESETS = ["pg-baseline", "s1-option-a", "nanogpt-shakespeare-char", "cpu-demo"]


def fingerprint(name: str) -> dict:
    cfg = load_preset(name).model
    torch.manual_seed(1234)
    model = GPT(cfg).eval()
    with torch.no_grad():  # perturb so zero-initialized projections carry signal too
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    x = (torch.arange(24) * 7 % cfg.vocab_size)[None]
    with torch.no_grad():
        logits = model(x)[0]
    weights = {n: [p.double().sum().item(), p.double().square().sum().item()] for n, p in model.named_parameters()}
    return {"weights": weights, "logits": logits[[0, 11, 23], :16].tolist()}


@pytest.mark.parametrize("name", PRESETS)
def test_foundation_preset_is_unchanged(name):
    golden = json.loads(GOLDEN.read_text())[name]
    now = fingerprint(name)
    assert list(now["weights"]) == list(golden["weights"])
    for key, (s, sq) in golden["weights"].items():
        assert now["weights"][key] == pytest.approx([s, sq], rel=1e-9, abs=1e-9), key
    assert torch.allclose(torch.tensor(now["logits"]), torch.tensor(golden["logits"]), atol=1e-4)


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps({name: fingerprint(name) for name in PRESETS}) + "\n")
    print(f"wrote {GOLDEN}")
