"""The model card the server shows: what the run folder or artifact records about the model it serves.

Read from what `lmgolf.api.load` returns (model, cfg, tokenizer, info, path, kind) and the run's own files:
summary.json (val loss and bits per byte of the trained model, before packing), run.json (the data folder,
corpus and tokenizer) and, for a run folder, the model.lmg packed beside it (its bytes). A field that is
not recorded is null.
"""

from __future__ import annotations

from pathlib import Path

from lmgolf.errors import LmgolfError
from lmgolf.runfiles import read_json_object


def model_card(loaded, name: str) -> dict:
    path = Path(loaded.path) if loaded.path is not None else None
    run_dir = path.parent if path is not None and loaded.kind == "artifact" else path
    summary = _json(run_dir / "summary.json") if run_dir else {}
    record = _json(run_dir / "run.json") if run_dir else {}
    data = record.get("data") if isinstance(record.get("data"), dict) else {}
    artifact_bytes = loaded.info.get("artifact_bytes") if loaded.kind == "artifact" else None
    if artifact_bytes is None and run_dir is not None and (run_dir / "model.lmg").is_file():
        artifact_bytes = (run_dir / "model.lmg").stat().st_size
    m = loaded.cfg.model
    return {
        "name": name, "kind": loaded.kind, "path": str(path) if path else None,
        "preset": loaded.cfg.preset or None,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "artifact_bytes": artifact_bytes,
        "val_bpb": summary.get("val_bpb"), "val_loss": summary.get("val_loss"),
        "trained_steps": summary.get("steps"), "trained_tokens": summary.get("tokens"),
        "shape": {"n_layer": m.n_layer, "d_model": m.d_model, "n_head": m.n_head, "context": m.context,
                  "vocab_size": m.vocab_size},
        "tokenizer": getattr(loaded.tokenizer, "kind", None),
        "training_data": _training_data(data),
    }


def _training_data(data: dict) -> dict | None:
    if not data:
        return None
    corpus = data.get("corpus") if isinstance(data.get("corpus"), dict) else {}
    counts = data.get("counts") if isinstance(data.get("counts"), dict) else {}
    train = counts.get("train") if isinstance(counts.get("train"), dict) else {}
    return {"path": data.get("path"), "corpus": corpus.get("name"), "train_tokens": train.get("tokens"),
            "train_bytes": train.get("bytes"), "train_documents": train.get("documents")}


def _json(path: Path) -> dict:
    try:
        return read_json_object(path, "") if path.is_file() else {}
    except LmgolfError:  # a damaged record leaves its fields null rather than refusing to serve
        return {}
