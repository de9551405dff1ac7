"""Parallel Muon: on 2 gloo processes each rank orthogonalizes its share of the matrices, and the
all-gathered updates leave every rank's parameters bitwise equal to the one-process optimizer's."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from lmgolf.device import Dist, close_distributed
from lmgolf.training import optim
from lmgolf.training.optim import Muon, assign_shares

SHAPES = [(32, 16), (16, 32), (24, 24), (8, 40), (40, 8), (12, 20)]
STEPS = 3


def run_muon(ns_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """A few Muon steps on seeded matrices and seeded gradients (the same on every process)."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*s, generator=gen)) for s in SHAPES]
    opt = Muon(params, lr=0.02, momentum=0.9, weight_decay=0.1, ns_dtype=ns_dtype)
    for _ in range(STEPS):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
    out = {f"p{i}": p.detach().clone() for i, p in enumerate(params)}
    out.update({f"buf{i}": opt.state[p]["momentum_buffer"].clone() for i, p in enumerate(params)})
    return out


def _worker(rank: int, world: int, store_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", store=dist.FileStore(store_path, world), rank=rank, world_size=world)
    calls = []
    original = optim.newton_schulz

    def counted(g, *args):
        calls.append(g.shape)
        return original(g, *args)

    optim.newton_schulz = counted
    try:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            result = run_muon(dtype)
            result["ns_calls"] = torch.tensor(len(calls))
            save_file(result, f"{out_dir}/rank{rank}-{name}.safetensors")
            calls.clear()
    finally:
        optim.newton_schulz = original
        close_distributed(Dist(rank, world, rank, owns_group=True))  # barrier first: a rank leaving early aborts gloo


def test_parallel_muon_on_two_processes_equals_one_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            single = run_muon(dtype)
            ranks = [load_file(tmp_path / f"rank{r}-{name}.safetensors") for r in range(2)]
            calls = [int(r.pop("ns_calls")) for r in ranks]
            assert sum(calls) == len(SHAPES) * STEPS and all(0 < c < len(SHAPES) * STEPS for c in calls)
            for result in ranks:
                assert result.keys() == single.keys()
                for key in single:
                    assert torch.equal(result[key], single[key]), (name, key)
    finally:
        torch.set_num_threads(threads)


def test_shares_are_balanced_and_cover_every_matrix():
    sizes = [100, 10, 60, 50, 40]
    owner = assign_shares(sizes, 2)  # largest first to the least loaded: 100 r0, 60 r1, 50 r1, 40 r0, 10 r1
    assert owner == [0, 1, 1, 1, 0]
    assert [sum(s for s, r in zip(sizes, owner) if r == k) for k in range(2)] == [140, 120]
    assert assign_shares(sizes, 1) == [0] * 5 and sorted(assign_shares(sizes, 8)) == [0, 1, 2, 3, 4]
