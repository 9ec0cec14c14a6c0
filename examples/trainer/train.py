"""A tiny, seeded PyTorch trainer on CPU that uses Wanka's SDK to checkpoint and resume.

Each step's batch is generated from (seed, step), so a run that is killed and resumed from
its last checkpoint recomputes exactly the batches an uninterrupted run sees, and ends with
the same weights. Progress goes to stdout as one JSON line per step.

    python examples/trainer/train.py --steps 60 --checkpoint-dir /tmp/ckpt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch
from torch import nn

from wanka.sdk import CheckpointDir, CheckpointTimer, GracefulStop, Reporter, Settings


def batch(seed: int, step: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    x = torch.randn(size, 16, generator=g)
    y = (x[:, :4].sum(dim=1, keepdim=True) > 0).float()
    return x, y


def model_and_optimizer(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--keep", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=0.0, help="pause per step (demos)")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    ckpts = CheckpointDir(args.checkpoint_dir or settings.checkpoint_dir, keep=args.keep)
    reporter = Reporter(settings)
    model, opt = model_and_optimizer(args.seed)
    start = 0
    latest = ckpts.latest()
    if latest is not None and (settings.resume or os.environ.get("WANKA_RESUME") is None):
        state = torch.load(latest.file("state.pt"), weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = latest.step
        print(json.dumps({"event": "resumed", "step": start}), flush=True)

    step = start
    # The operator's advised interval, once it has one; --checkpoint-every steps until then.
    timer = CheckpointTimer(settings.checkpoint_interval_seconds)

    def save() -> None:
        began = time.monotonic()
        with ckpts.save(step) as d:
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, d / "state.pt")
        timer.saved()
        reporter.report(step, str(ckpts.root / f"step-{step:08d}"), time.time(),
                        save_seconds=time.monotonic() - began)

    stop = GracefulStop(save)
    loss_fn = nn.BCEWithLogitsLoss()
    loss = torch.tensor(0.0)
    while step < args.steps:
        x, y = batch(args.seed, step)
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        step += 1
        print(json.dumps({"event": "step", "step": step, "loss": loss.item()}), flush=True)
        due = timer.due() if timer.interval else step % args.checkpoint_every == 0
        if due or step == args.steps:
            save()
        if stop.requested:
            stop.save_once()
            print(json.dumps({"event": "stopped", "step": step}), flush=True)
            return 0
        if args.step_seconds:
            time.sleep(args.step_seconds)
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    print(json.dumps({"event": "done", "step": step, "loss": loss.item(),
                      "weights_sum": weights.double().sum().item()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
