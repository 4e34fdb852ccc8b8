"""The training loop of ``vimcan train``.

Recipe (the paper's, the defaults of ``TrainConfig``): AdamW with weight decay 0.01, learning
rate 2e-4 decayed by 0.99 after every epoch, batch 16, window lengths drawn per batch from
{9, 18, ..., 81}. An *epoch* is ``steps_per_epoch`` optimizer steps; by default as many as
it takes to see every training frame once in expectation (frames / (batch x mean length)).

Each epoch ends with a validation on the validation split (P1 / P2 in mm, clean signals and,
optionally, realistic ones); the best checkpoint by clean P1 is kept. ``last.pt`` holds
everything needed to resume (model, optimizer, schedule, step, random generators) and is
written every ``checkpoint_every`` steps and at the end of each epoch, so an interrupted run
resumes where it stopped. Launched with ``torchrun --nproc_per_node N``, the model is
wrapped in DistributedDataParallel (each process draws its own windows; rank 0 validates
and writes checkpoints).

Output folder (``out_dir``): ``last.pt`` (resume state), ``best.pt`` (shipped checkpoint
format, ``vimcan_core.model.checkpoint``), ``history.jsonl`` (one line per epoch),
``train.log`` when the CLI runs it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from vimcan_core.dataset import Batch, SamplerConfig, WindowSampler, make_eval_clips
from vimcan_core.errors import CheckpointError
from vimcan_core.retarget import RetargetedClip
from vimcan_core.synthesis.noise import NoisePreset
from vimcan_core.training.evaluate import EvalResult, evaluate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (saved into its checkpoints and JSON)."""

    out_dir: Path = Path("runs/vimcan-t")  # checkpoints, history and logs
    batch_size: int = 16  # paper
    lr: float = 2e-4  # paper
    lr_decay: float = 0.99  # exponential decay per epoch (paper)
    weight_decay: float = 0.01  # AdamW (paper)
    epochs: int = 100  # number of epochs
    steps_per_epoch: int | None = None  # None: one pass over the training frames in expectation
    grad_clip: float = 1.0  # max gradient norm (0: off)
    seed: int = 0  # seeds numpy (windows, cameras, noise) and torch (initialisation)
    sampler: SamplerConfig = SamplerConfig()  # windows, noise mix, augmentation
    val_window: int = 81  # evaluation window of the bidirectional model (streaming: whole clips)
    val_realistic: bool = True  # also validate with the realistic noise preset each epoch
    val_seed: int = 0  # seed of the fixed validation cameras and noise
    checkpoint_every: int = 200  # steps between resume checkpoints within an epoch
    max_steps: int | None = None  # stop after this many steps in total (CPU budget)
    max_minutes: float | None = None  # stop after this much wall time in this process
    num_threads: int | None = None  # torch CPU threads (None: torch's default)
    device: str = "cpu"  # "cpu", "cuda", "cuda:1"; under torchrun: cuda:LOCAL_RANK when CUDA exists


@dataclass(frozen=True)
class Progress:
    """What a progress callback gets after every step."""

    step: int
    epoch: int
    step_in_epoch: int
    steps_per_epoch: int
    loss: float
    frames_per_s: float
    lr: float


@dataclass
class TrainState:
    step: int = 0
    best_p1_mm: float = math.inf
    best_epoch: int = -1
    train_seconds: float = 0.0  # wall time spent training, summed over resumed processes
    frames_seen: int = 0
    history: list[dict] = field(default_factory=list)


def _distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")), world


def default_steps_per_epoch(clips: list[RetargetedClip], config: TrainConfig) -> int:
    frames = sum(c.num_frames for c in clips)
    mean_len = float(np.mean(config.sampler.lengths))
    return max(1, int(math.ceil(frames / (config.batch_size * mean_len))))


def _loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from vimcan_core.losses import vimcan_loss

    out = vimcan_loss(pred, target)
    return out[0] if isinstance(out, tuple) else out


class Trainer:
    """Trains a model on retargeted clips; see the module docstring."""

    def __init__(
        self,
        model: nn.Module,
        train_clips: list[RetargetedClip],
        val_clips: list[RetargetedClip],
        config: TrainConfig = TrainConfig(),
        metadata: dict | None = None,
    ) -> None:
        self.config = config
        self.rank, self.local_rank, self.world = _distributed()
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        if self.world > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend)
        if self.world > 1 and torch.cuda.is_available():
            self.device = torch.device(f"cuda:{self.local_rank}")
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device(config.device)
        self.model = model.to(self.device)
        self.module = model  # the bare model (checkpoints, evaluation)
        if self.world > 1:
            self.model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.local_rank] if self.device.type == "cuda" else None
            )
        self.sampler = WindowSampler(train_clips, config.sampler)
        self.steps_per_epoch = config.steps_per_epoch or default_steps_per_epoch(train_clips, config)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=config.lr_decay)
        self.rng = np.random.default_rng([config.seed, self.rank])
        self.state = TrainState()
        self.metadata = dict(metadata or {})
        self.val_sets: dict[str, list] = {}
        if self.rank == 0 and val_clips:
            self.val_sets["clean"] = make_eval_clips(val_clips, NoisePreset.CLEAN, config.val_seed)
            if config.val_realistic:
                self.val_sets["realistic"] = make_eval_clips(val_clips, NoisePreset.REALISTIC, config.val_seed)
        self.out_dir = Path(config.out_dir)

    # ---- checkpoints -------------------------------------------------------------------
    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    def save_resume(self) -> None:
        if self.rank != 0:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        blob = {
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "state": dataclasses.asdict(self.state),
            "rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "model_config": getattr(getattr(self.module, "config", None), "to_dict", lambda: {})(),
            "steps_per_epoch": self.steps_per_epoch,
        }
        tmp = self.last_path.with_suffix(".tmp")
        torch.save(blob, tmp)
        tmp.replace(self.last_path)

    def resume(self) -> bool:
        """Load ``last.pt`` when there is one; True when a run was resumed."""
        if not self.last_path.is_file():
            return False
        try:
            blob = torch.load(self.last_path, map_location=self.device, weights_only=False)
        except Exception as exc:  # a truncated file, another format
            raise CheckpointError(f"{self.last_path}: cannot resume from it ({exc}); delete it to start afresh") from exc
        config = getattr(self.module, "config", None)
        saved = blob.get("model_config")
        if saved and config is not None and type(config).from_dict(saved) != config:
            raise CheckpointError(
                f"{self.last_path}: saved for model {saved}, not {config.to_dict()}; use another --out folder"
            )
        self.module.load_state_dict(blob["model"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.scheduler.load_state_dict(blob["scheduler"])
        if self.scheduler.gamma != self.config.lr_decay:  # e.g. an annealing tail: decay faster from here on
            log.info("lr decay per epoch changed from %g to %g at step %d (lr now %.3g)", self.scheduler.gamma,
                     self.config.lr_decay, blob["state"]["step"], self.scheduler.get_last_lr()[0])
            self.scheduler.gamma = self.config.lr_decay
        self.state = TrainState(**blob["state"])
        if self.rank == 0:
            self.rng.bit_generator.state = blob["rng"]
        else:  # the file holds rank 0's generator: give this rank its own stream again
            self.rng = np.random.default_rng([self.config.seed, self.rank, self.state.step])
        torch.set_rng_state(blob["torch_rng"])
        log.info("resumed %s at step %d (epoch %d)", self.last_path, self.state.step, self.state.step // self.steps_per_epoch)
        return True

    def save_best(self, epoch: int, results: dict[str, EvalResult]) -> None:
        from vimcan_core.model.checkpoint import save_checkpoint

        meta = {
            **self.metadata,
            "epoch": epoch,
            "step": self.state.step,
            "validation": {k: v.to_dict() for k, v in results.items()},
        }
        save_checkpoint(self.best_path, self.module, meta)

    # ---- loop --------------------------------------------------------------------------
    def train_step(self, batch: Batch) -> float:
        self.model.train()
        pred = self.model(
            batch.keypoints.to(self.device), batch.quats.to(self.device), imu_valid=batch.imu_valid.to(self.device)
        )  # B x T x 17 x 3
        loss = _loss(pred, batch.target.to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        return float(loss.detach())

    def validate(self) -> dict[str, EvalResult]:
        streaming = bool(getattr(getattr(self.module, "config", None), "streaming", False))
        window = None if streaming else self.config.val_window
        return {k: evaluate(self.module, v, window, self.device) for k, v in self.val_sets.items()}

    def fit(self, progress: Callable[[Progress], None] | None = None) -> TrainState:
        """Train until ``epochs`` (or max_steps / max_minutes); returns the final state."""
        cfg = self.config
        total = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            total = min(total, cfg.max_steps)
        start_wall = time.monotonic()
        seg_start, seg_frames = time.monotonic(), 0
        while self.state.step < total:
            if self._budget_spent(start_wall):
                log.info("time budget of %.1f min reached at step %d", cfg.max_minutes, self.state.step)
                break
            t0 = time.monotonic()
            batch = self.sampler.batch(self.rng, cfg.batch_size)
            loss = self.train_step(batch)
            dt = time.monotonic() - t0
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {self.state.step}; lower --lr or check the data")
            frames = int(batch.keypoints.shape[0] * batch.keypoints.shape[1]) * self.world
            self.state.step += 1
            self.state.train_seconds += dt
            self.state.frames_seen += frames
            seg_frames += frames
            epoch, in_epoch = divmod(self.state.step, self.steps_per_epoch)
            if progress is not None and self.rank == 0:
                fps = seg_frames / max(time.monotonic() - seg_start, 1e-9)
                progress(Progress(self.state.step, epoch, in_epoch, self.steps_per_epoch, loss, fps, self.scheduler.get_last_lr()[0]))
            if in_epoch == 0:
                self.scheduler.step()
                self._end_epoch(epoch - 1)
                seg_start, seg_frames = time.monotonic(), 0
            elif self.state.step % cfg.checkpoint_every == 0:
                self.save_resume()
        self.save_resume()
        return self.state

    def _budget_spent(self, start_wall: float) -> bool:
        """True when ``max_minutes`` is over. Under torchrun the ranks decide together (any rank's
        clock ending the budget stops all of them at the same step): a rank that stopped alone
        would leave the others waiting in their next gradient all-reduce for ever."""
        minutes = self.config.max_minutes
        spent = minutes is not None and time.monotonic() - start_wall > 60 * minutes
        if self.world > 1 and minutes is not None:
            flag = torch.tensor([float(spent)], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            spent = bool(flag.item())
        return spent

    def _end_epoch(self, epoch: int) -> None:
        if self.rank != 0:
            if self.world > 1:
                torch.distributed.barrier()
            return
        entry: dict = {
            "epoch": epoch, "step": self.state.step, "train_seconds": round(self.state.train_seconds, 1),
            "frames_per_s": round(self.state.frames_seen / max(self.state.train_seconds, 1e-9), 1),
            "lr": self.scheduler.get_last_lr()[0],
        }
        if self.val_sets:
            t0 = time.monotonic()
            results = self.validate()
            entry.update({f"val_{k}_p1_mm": round(r.p1_mm, 2) for k, r in results.items()})
            entry.update({f"val_{k}_p2_mm": round(r.p2_mm, 2) for k, r in results.items()})
            entry["val_seconds"] = round(time.monotonic() - t0, 1)
            p1 = results["clean"].p1_mm
            if p1 < self.state.best_p1_mm:
                self.state.best_p1_mm, self.state.best_epoch = p1, epoch
                self.save_best(epoch, results)
                entry["best"] = True
        self.state.history.append(entry)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "history.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        log.info("epoch %d: %s", epoch, entry)
        self.save_resume()
        if self.world > 1:
            torch.distributed.barrier()
