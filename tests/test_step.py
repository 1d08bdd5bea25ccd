"""reslab.step: the graphed training step's bookkeeping, checked on the CPU with a stand-in for CUDA graphs.

A CUDA graph cannot be captured here, so EagerGraphs stands in for step.CudaGraphs: capturing records the step
without running it, and a replay runs it again on the static inputs and writes its outputs into the static
outputs, as a replayed graph does. Training through it must give, bit for bit, what the eager step gives.
"""
from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

import reslab.train
from reslab import step as step_module
from reslab.config import TrainConfig
from reslab.loader import TensorLoader
from reslab.models import build_model
from reslab.train import train_model


class EagerGraphs:
    capturable = False   # nothing is captured: the CPU's fused Adam stays as it is

    def __init__(self) -> None:
        self.warmups = self.captures = self.replays = 0

    @contextmanager
    def warmup(self):
        self.warmups += 1
        yield

    def capture(self, fn):
        self.captures += 1
        outputs = (torch.empty(0), torch.empty(0))   # filled by every replay, as a graph's outputs are

        def replay() -> None:
            self.replays += 1
            for static, new in zip(outputs, fn()):
                static.resize_(new.shape).copy_(new)
        return replay, outputs


def loaders(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (181, 1, 28, 28), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (181,), generator=g)
    # 181 images in batches of 16: 11 full batches and a short one of 5, every epoch
    train = TensorLoader(images[:181], labels[:181], 16, [0.5], [0.25], shuffle=True, seed=seed)
    val = TensorLoader(images[:64], labels[:64], 32, [0.5], [0.25])
    return train, val


def train(cuda_graphs: bool, log_grad_norms: bool = True):
    torch.manual_seed(0)
    model = build_model("mlp", (1, 28, 28), 10)
    config = TrainConfig(epochs=3, cuda_graphs=cuda_graphs, log_grad_norms=log_grad_norms, wandb="disabled",
                         stagnation_stop=False, overfit_stop=False)
    history = train_model(model, *loaders(), config, device="cpu")
    records = [{k: v for k, v in r.items() if k != "seconds"} for r in history.epochs]
    return records, model.state_dict(), history.cuda_graph


@pytest.mark.parametrize("log_grad_norms", [True, False])
def test_a_graphed_step_trains_as_the_eager_one_bit_for_bit(monkeypatch, log_grad_norms):
    eager_records, eager_state, _ = train(cuda_graphs=False, log_grad_norms=log_grad_norms)
    graphs = EagerGraphs()
    monkeypatch.setattr(reslab.train, "graph_backend", lambda device: graphs)
    records, state, graphed = train(cuda_graphs=True, log_grad_norms=log_grad_norms)
    assert records == eager_records
    assert all(torch.equal(state[k], eager_state[k]) for k in eager_state)
    assert any("grad_2.0_norm/net.1.weight" in r for r in records) == log_grad_norms
    # Captured once for the run: 3 warm-up steps, the capture on the 4th batch; the short batches run eagerly.
    assert (graphs.warmups, graphs.captures) == (step_module.WARMUP_STEPS, 1)
    assert graphs.replays == 3 * 11 - step_module.WARMUP_STEPS
    assert graphed                                             # summary.json's cuda_graph


def test_cuda_graphs_leave_the_cpu_eager():
    assert step_module.graph_backend(torch.device("cpu")) is None
    records, _, graphed = train(cuda_graphs=True)
    assert records == train(cuda_graphs=False)[0] and not graphed


def test_a_graphed_step_runs_eagerly_until_it_has_warmed_up():
    model = build_model("mlp", (1, 28, 28), 10)
    optimizer = torch.optim.Adam(model.parameters())
    graphs = EagerGraphs()
    graphed = step_module.GraphedStep(step_module.TrainStep(model, optimizer, torch.device("cpu"), amp=False), graphs)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    for _ in range(step_module.WARMUP_STEPS):
        graphed(x, y)
    assert (graphs.warmups, graphs.captures) == (step_module.WARMUP_STEPS, 0)
    loss, logits = graphed(x, y)
    assert (graphs.captures, graphs.replays) == (1, 1) and logits.shape == (8, 10)
    graphed(x[:3], y[:3])                                      # another shape: eager, no second capture
    assert (graphs.captures, graphs.replays) == (1, 1)
    before = loss.clone()
    graphed(x, y)
    assert torch.equal(loss, before)                           # a returned loss outlives the next replay
