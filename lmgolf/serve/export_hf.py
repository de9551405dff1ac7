"""Export to Hugging Face `transformers`: a folder that `AutoModelForCausalLM.from_pretrained(DIR)` and
`AutoTokenizer.from_pretrained(DIR)` load with no custom code, giving the same logits and token ids.

The model maps onto `LlamaForCausalLM` (RoPE + RMSNorm + SwiGLU) or `GPT2LMHeadModel` (learned or no positions
+ LayerNorm + GELU), chosen from the config (lmgolf.serve.hf_architectures); an option neither class has is
refused in one line naming its config field. The tokenizer is written as a `tokenizer.json`
(PreTrainedTokenizerFast, lmgolf.serve.export_tokenizer); one that does not map is refused unless the export is
asked for without a tokenizer. docs/export.md has the tables.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from lmgolf.config import ModelConfig
from lmgolf.errors import LmgolfError
from lmgolf.runfiles import atomic_write_bytes, atomic_write_text
from lmgolf.serve.export_tokenizer import tokenizer_files
from lmgolf.serve.hf_architectures import architecture, hf_config, hf_state_dict, refusal

MARKER = "lmgolf-export.json"  # written into every export folder: the sign that a folder may be replaced
WRITTEN = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
           "special_tokens_map.json", MARKER)


def is_export_folder(out: Path) -> bool:
    try:
        return json.loads((out / MARKER).read_text()).get("format") == "lmgolf-hf-export"
    except (OSError, ValueError, AttributeError):
        return False


def check_out(out: Path) -> None:
    """Refuses an --out that is a file, or a non-empty folder that is not an earlier export."""
    if out.exists() and not out.is_dir():
        raise LmgolfError(f"{out}: exists and is not a folder; refusing to replace it")
    if out.is_dir() and any(out.iterdir()) and not is_export_folder(out):
        raise LmgolfError(f"{out}: a non-empty folder that is not an lmgolf export; refusing to write into it")


def export_hf(model, cfg: ModelConfig, tokenizer, out: str | Path, *, with_tokenizer: bool = True,
              source: str = "") -> list[str]:
    """Writes the Hugging Face folder `out` (its class: hf_architectures.architecture(cfg)); returns the names
    of the files written."""
    reason = refusal(cfg)
    if reason:
        raise LmgolfError(reason)
    out = Path(out)
    check_out(out)
    files = {}
    if with_tokenizer:
        files.update(tokenizer_files(tokenizer))
    from safetensors.torch import save
    bos = getattr(tokenizer, "bos_id", None)
    files["config.json"] = json.dumps(hf_config(cfg, bos), indent=2) + "\n"
    files["generation_config.json"] = json.dumps({"bos_token_id": bos, "do_sample": True}, indent=2) + "\n"
    files["model.safetensors"] = save(hf_state_dict(model, cfg), metadata={"format": "pt"})
    files[MARKER] = json.dumps({"format": "lmgolf-hf-export", "architecture": architecture(cfg),
                                "source": source, "tokenizer": tokenizer.kind if with_tokenizer else None},
                               indent=2) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    for name in WRITTEN:  # an earlier export's files that this one does not write (say, its tokenizer)
        if name not in files and (out / name).is_file():
            os.remove(out / name)
    for name in sorted(files, key=lambda n: n != MARKER):  # the marker first: a half-written export is ours
        data = files[name]
        (atomic_write_bytes if isinstance(data, bytes) else atomic_write_text)(out / name, data)
    return sorted(files)
