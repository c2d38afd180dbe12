"""Multi-process training with DistributedDataParallel: 2 processes (gloo on loopback, rendezvous through a
FileStore in tmp_path) train a model made of torch_rnn_ext's modules on two shards of one batch, and end
with the parameters a single process gets on the whole batch.

The workers are this file run as a script (``python test_ddp.py RANK WORLD STORE OUT``), so the test
controls their environment, bounds their time and always reaps them.
"""
import os
import subprocess
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
import torch_rnn_ext  # noqa: E402

WORLD, BATCH, T, I, H, O = 2, 8, 6, 5, 7, 3
STEPS, LR, TIMEOUT_S = 5, 0.2, 120


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = torch_rnn_ext.LSTM(I, H, num_layers=2, batch_first=True)
        self.gru = torch_rnn_ext.GRU(H, H, batch_first=True)
        self.head = nn.Linear(H, O)

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.lstm(x)
        h, _ = self.gru(h)
        return self.head(h)


def make_model(seed: int) -> Net:
    torch.manual_seed(seed)
    return Net().double()


def make_batch():
    g = torch.Generator().manual_seed(1234)
    return (torch.randn(BATCH, T, I, generator=g, dtype=torch.float64),
            torch.randn(BATCH, T, O, generator=g, dtype=torch.float64))


def shard(t: Tensor, rank: int) -> Tensor:
    n = BATCH // WORLD
    return t[rank * n:(rank + 1) * n]


def train(model: nn.Module, x: Tensor, y: Tensor):
    """STEPS of SGD on mean-squared error (the mean over the rows given). Returns the losses."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    losses = []
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x), y)
        loss.backward()
        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, f"parameters without a gradient: {missing}"
        opt.step()
        losses.append(loss.item())
    return losses


def worker(rank: int, world: int, store_path: str, out_path: str) -> None:
    torch.set_num_threads(1)
    store = dist.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=60))
    try:
        # Each rank starts from different weights: DDP's constructor broadcasts rank 0's.
        model = DistributedDataParallel(make_model(seed=rank), find_unused_parameters=False)
        x, y = make_batch()
        losses = train(model, shard(x, rank), shard(y, rank))
        torch.save({"state": model.module.state_dict(), "losses": losses}, out_path)
        # Both ranks reach the teardown together: a rank that destroys its gloo group and exits while the
        # other still holds its connections can abort that one ("terminate called without an active
        # exception", seen once in CI on torch 2.15).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_workers(tmp_path):
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([REPO_ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    store = str(tmp_path / "store")
    procs, logs, outs = [], [], []
    try:
        for rank in range(WORLD):
            outs.append(tmp_path / f"rank{rank}.pt")
            logs.append(open(tmp_path / f"rank{rank}.log", "w+"))
            procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), str(rank), str(WORLD), store,
                                           str(outs[-1])], stdout=logs[-1], stderr=subprocess.STDOUT, env=env,
                                          cwd=str(tmp_path)))
        deadline = time.monotonic() + TIMEOUT_S
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        codes = [p.poll() for p in procs]
        text = []
        for rank, log in enumerate(logs):
            log.seek(0)
            text.append(f"--- rank {rank} (exit {codes[rank]}) ---\n{log.read()}")
        assert codes == [0] * WORLD, f"workers failed or timed out after {TIMEOUT_S} s:\n" + "\n".join(text)
        return [torch.load(o) for o in outs], "\n".join(text)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()


def test_ddp_two_processes_equal_one_process_on_the_whole_batch(tmp_path):
    results, logs = run_workers(tmp_path)
    assert "Expected to have finished reduction" not in logs

    x, y = make_batch()
    single = make_model(seed=0)
    single_losses = train(single, x, y)
    reference = single.state_dict()

    names = list(reference)
    assert len(names) == len(results[0]["state"]) == 4 * 2 + 4 + 2  # 2 LSTM layers, 1 GRU layer, head
    for name in names:
        # Gloo's allreduce hands every rank the same sum: the replicas stay bitwise identical.
        assert torch.equal(results[0]["state"][name], results[1]["state"][name]), name
        assert torch.allclose(results[0]["state"][name], reference[name], rtol=0, atol=1e-10), name
    # Each rank's loss is the mean over its shard; their mean is the whole batch's loss.
    for step in range(STEPS):
        mean = (results[0]["losses"][step] + results[1]["losses"][step]) / 2
        assert abs(mean - single_losses[step]) < 1e-10, step
    assert single_losses[-1] < single_losses[0]

    # Not vacuous: without the gradient averaging, rank 0 would end elsewhere.
    alone = make_model(seed=0)
    train(alone, shard(x, 0), shard(y, 0))
    assert max((alone.state_dict()[n] - reference[n]).abs().max().item() for n in names) > 1e-4


if __name__ == "__main__":
    worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
