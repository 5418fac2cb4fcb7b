"""Synchronized batch statistics with 2 CPU processes (gloo) equal one process on the concatenated batch."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import dynnorm
from layer_cases import randomize

SYNC_LAYERS = ["SyncSN", "SyncSSN", "SyncEN", "SyncDN", "SyncDNB", "SyncDNC"]
CHANNELS = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _inputs(total: int):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(total, CHANNELS, 4, 5, generator=generator, dtype=torch.float64) * 2 + 1
    upstream = torch.randn(total, CHANNELS, 4, 5, generator=generator, dtype=torch.float64)
    return x, upstream


def _build(name: str):
    torch.manual_seed(2)
    return randomize(dynnorm.create_norm(name, CHANNELS, dtype=torch.float64, momentum=0.5))


def _run(layer, x, upstream):
    """Two training steps (running statistics move twice), then gradients of the second."""
    layer(x)
    x = x.clone().requires_grad_()
    out = layer(x)
    (out * upstream).sum().backward()
    return out.detach(), x.grad


def _thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def _worker(rank: int, world_size: int, port: int, splits: list[int], out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    threads_before_init = _thread_count()
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    backend_threads = _thread_count() - threads_before_init
    try:
        torch.set_num_threads(1)
        x, upstream = _inputs(sum(splits))
        start = sum(splits[:rank])
        local = slice(start, start + splits[rank])
        results = {}
        for name in SYNC_LAYERS:
            layer = _build(name)
            out, grad = _run(layer, x[local], upstream[local])
            for p in layer.parameters():  # what DDP does (up to its 1/world_size averaging)
                if p.grad is not None:
                    dist.all_reduce(p.grad)
            results[name] = {
                "out": out, "input_grad": grad,
                "param_grads": {n: p.grad for n, p in layer.named_parameters() if p.grad is not None},
                "buffers": {n: b.clone() for n, b in layer.named_buffers()},
            }
    finally:
        threads_before_destroy = _thread_count()
        dist.destroy_process_group()
    # Nothing the layers did may keep the process group alive: its worker threads must be joined now, or
    # they can abort the process at interpreter exit.
    results["backend_threads_left"] = backend_threads - (threads_before_destroy - _thread_count())
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.parametrize("splits", [[3, 3], [4, 1], [4, 0]], ids=["equal", "unequal", "empty-rank"])
def test_synchronized_layers_match_single_process_on_concatenated_batch(splits, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), splits, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["backend_threads_left"] for r in ranks] == [0, 0], "process group outlived destroy_process_group"
    x, upstream = _inputs(sum(splits))
    for name in SYNC_LAYERS:
        layer = _build(name)  # not distributed here: local statistics over the whole batch
        out, grad = _run(layer, x, upstream)
        torch.testing.assert_close(torch.cat([r[name]["out"] for r in ranks]), out, msg=name)
        torch.testing.assert_close(torch.cat([r[name]["input_grad"] for r in ranks]), grad, msg=name)
        for param_name, param in layer.named_parameters():
            if param.grad is not None:
                for r in ranks:
                    torch.testing.assert_close(r[name]["param_grads"][param_name], param.grad, msg=f"{name}.{param_name}")
        for buffer_name, buffer in layer.named_buffers():
            for r in ranks:
                torch.testing.assert_close(r[name]["buffers"][buffer_name], buffer, msg=f"{name}.{buffer_name}")


def test_unsynchronized_layer_uses_local_statistics_when_not_distributed():
    assert not dist.is_initialized()
    layer = dynnorm.SyncSwitchNorm2d(CHANNELS)
    x = torch.randn(4, CHANNELS, 3, 3)
    reference = dynnorm.SwitchNorm2d(CHANNELS)
    torch.testing.assert_close(layer(x), reference(x))
