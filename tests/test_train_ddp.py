"""Two-process DistributedDataParallel training on CPU (torchrun, gloo): ranks stay in sync.

Each rank trains a tiny joint stage for a few steps on its own shard of every global batch, then
dumps its weights, its timestep-sampler history and the data keys it saw; the test compares them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from conftest import tiny_settings

WORKER = """
import json, os, sys, torch
from piti.train.config import TrainConfig
from piti.train.loop import StepBatches, Trainer

settings = json.loads(sys.argv[1])
trainer = Trainer(TrainConfig(**settings))
initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
trainer.train()
rank, world = trainer.dist.rank, trainer.dist.world_size
keys = StepBatches(len(trainer.stage.dataset), settings["batch_size"], rank, world, settings["seed"], 0)
torch.save({
    "initial": initial,
    "final": trainer.model.state_dict(),
    "ema": trainer.ema.shadow_state(),
    "sampler_counts": torch.from_numpy(trainer.timestep_sampler.counts),
    "keys": [keys.keys(s) for s in range(settings["iterations"])],
}, os.path.join(settings["out_dir"], f"rank{rank}.pt"))
torch.distributed.destroy_process_group()
"""


def test_two_process_ddp_run_keeps_ranks_in_sync(tmp_path):
    settings = tiny_settings(tmp_path, "joint")
    settings.update(iterations=3, uncond_p=0.2, schedule_sampler="loss-second-moment", save_interval=3, seed=0)
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(worker),
        json.dumps(settings),
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    run = Path(settings["out_dir"])
    r0, r1 = (torch.load(run / f"rank{r}.pt", weights_only=True) for r in range(2))
    # Same starting point, same end point, on both ranks, and training did move the weights.
    for k in r0["final"]:
        assert torch.equal(r0["initial"][k], r1["initial"][k]), k
        assert torch.equal(r0["final"][k], r1["final"][k]), k
        assert torch.equal(r0["ema"].get(k, r0["final"][k]), r1["ema"].get(k, r1["final"][k])), k
    assert any(not torch.equal(r0["initial"][k], r0["final"][k]) for k in r0["final"])
    # Every rank recorded the losses of the whole global batch (gathered), identically.
    assert torch.equal(r0["sampler_counts"], r1["sampler_counts"])
    assert int(r0["sampler_counts"].sum()) == settings["iterations"] * settings["batch_size"]
    # The ranks saw disjoint halves of each global batch.
    for k0, k1 in zip(r0["keys"], r1["keys"]):
        assert len(k0) == len(k1) == settings["batch_size"] // 2 and not set(map(tuple, k0)) & set(map(tuple, k1))
    # Rank 0 alone wrote the run's files.
    assert (run / "model.safetensors").is_file() and (run / "log.csv").is_file()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["state_00000003.pt"]
