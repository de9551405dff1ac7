"""The curriculum's document scores (train.curriculum): `length`, or `loss`, the mean loss per token a reference
model (train.curriculum_model: a run folder or an artifact, with the data folder's tokenizer) gives each train
document, scored inside the document (lmgolf.eval.evaluate with docs=True) once at the start of training, the
windows shared out among the processes under torchrun.
The ordering itself is lmgolf.data.curriculum.DocumentOrder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from lmgolf.config import Config
from lmgolf.data.curriculum import DocumentOrder, document_bounds, length_scores
from lmgolf.data.folder import DataFolder
from lmgolf.errors import LmgolfError
from lmgolf.eval.evaluate import evaluate
from lmgolf.training.loading import load_trained


def curriculum_order(cfg: Config, data: DataFolder, device, dtype, rank: int = 0, world_size: int = 1) -> DocumentOrder | None:
    """The curriculum's document order (None: train.curriculum=none), the same on every process."""
    t = cfg.train
    if t.curriculum == "none":
        return None
    tokens = data.train_tokens()
    if t.curriculum == "length":
        scores = length_scores(tokens, data.bos_id)
    else:
        model = reference_model(t.curriculum_model, data, device)
        scores = loss_scores(model, tokens, data.bos_id, device, dtype, rank, world_size)
    return DocumentOrder(tokens, data.bos_id, scores, t.curriculum_start_quantile, t.curriculum_end)


def reference_model(path: str | Path, data: DataFolder, device):
    """The model of a run folder or artifact, refused unless its tokenizer is the data folder's."""
    what = "config field train.curriculum_model"
    trained = load_trained(path, device=device, what=what)
    fingerprint = trained.tokenizer.fingerprint
    if fingerprint != data.fingerprint:
        raise LmgolfError(f"{what}: {path} has tokenizer fingerprint {fingerprint[:12]}..., "
                          f"the data folder {data.path} has {data.fingerprint[:12]}...; score with a model of this tokenizer")
    return trained.model


def loss_scores(model, tokens: np.ndarray, bos_id: int, device, dtype, rank: int = 0, world_size: int = 1) -> np.ndarray:
    """Each document's mean loss (nats per token) over its own tokens after its BOS, each predicted from the
    document alone; a document of a lone BOS scores 0. Under torchrun each process scores every world_size-th
    window and the per-token nats are summed over the processes (each token is scored by one of them)."""
    n = len(tokens)
    result = evaluate(model, tokens, np.zeros(n, dtype=np.int64), model.cfg.context, device=device, dtype=dtype,
                      progress=False, rank=rank, world_size=world_size, docs=True, bos_id=bos_id, per_token=True)
    nats = result.nats
    if world_size > 1:
        summed = torch.from_numpy(nats).to(device)
        dist.all_reduce(summed)
        nats = summed.cpu().numpy()
    nats = np.concatenate([[0.0], nats])  # nats[i]: of token i (token 0 is never a target)
    starts, ends = document_bounds(tokens, bos_id)
    sums = np.add.reduceat(nats, starts) - nats[starts]  # a document's own tokens: not its BOS, which the previous predicts
    counts = ends - starts - 1
    return np.where(counts > 0, sums / np.maximum(counts, 1), 0.0)
