"""A data-parallel training run for ``test_training`` (started by torchrun with 2 CPU processes,
gloo): trains a tiny VIMCAN on real CMU clips and saves each rank's final weights and step.

    python -m torch.distributed.run --nproc_per_node 2 tests/vimcan_core/ddp_worker.py OUT [--skewed-clock]

``--skewed-clock``: rank 1's clock runs 1000x fast, so its time budget ends steps before rank
0's (the ranks must still stop together)."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tests.conftest import SHARED_DATA  # noqa: E402
from tests.vimcan_core.tiny_model import TINY  # noqa: E402
from vimcan_core.dataset import SamplerConfig, load_clip  # noqa: E402
from vimcan_core.model import Vimcan, preset  # noqa: E402
from vimcan_core.training import trainer as trainer_module  # noqa: E402
from vimcan_core.training.trainer import TrainConfig, Trainer  # noqa: E402

class _FastClock:
    """``time`` for the trainer module, with ``monotonic`` running 1000x fast."""

    def __init__(self) -> None:
        self._start = time.monotonic()

    def monotonic(self) -> float:
        return self._start + 1000.0 * (time.monotonic() - self._start)


def main() -> None:
    out = Path(sys.argv[1])
    skewed = "--skewed-clock" in sys.argv
    rank = int(os.environ["RANK"])
    if skewed and rank == 1:
        trainer_module.time = _FastClock()  # type: ignore[assignment]
    root = SHARED_DATA / "cmu" / "subjects"
    train = [load_clip(root / "09" / f"09_{k:02d}.bvh.gz", cache_dir=None) for k in (1, 2)]
    val = load_clip(root / "02" / "02_02.bvh.gz", cache_dir=None)
    val = replace(val, joints_world_m=val.joints_world_m[:20], bone_quats=val.bone_quats[:20])
    config = TrainConfig(
        out_dir=out, batch_size=2, lr=3e-3, epochs=2, steps_per_epoch=3, sampler=SamplerConfig(lengths=(9,)),
        val_window=9, val_realistic=False, checkpoint_every=100, num_threads=1, seed=5,
        max_minutes=0.05 if skewed else None,  # rank 1 (fast clock) runs out after ~3 ms of real time
    )
    torch.manual_seed(rank)  # different initialisations: DDP must broadcast rank 0's
    trainer = Trainer(Vimcan(preset("vimcan-t", **TINY)), train, [val], config)
    state = trainer.fit()
    torch.save(trainer.module.state_dict(), out / f"rank{rank}.pt")
    (out / f"rank{rank}.json").write_text(json.dumps({"step": state.step, "world": trainer.world}))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
