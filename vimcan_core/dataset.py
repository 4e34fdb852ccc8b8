"""Training and evaluation data from BVH folders: retargeted clips (cached), random windows
with synthetic sensor signals, and deterministic evaluation sets.

A data folder is either the CMU layout of ``../shared/data/cmu`` (an ``index.csv`` with
``file``, ``subject`` and ``split`` columns) or any folder of ``*.bvh`` / ``*.bvh.gz`` files
(found recursively; all of them are one split).

Retargeted clips are cached as ``.npz`` under ``cache_dir`` (``.cache/clips`` by default),
keyed by the file's path, size and modification time and the retarget settings, so the
BVH files are parsed once.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vimcan_core.errors import MotionFileError
from vimcan_core.retarget import RetargetConfig, RetargetedClip, retarget_file
from vimcan_core.synthesis.noise import NoisePreset
from vimcan_core.synthesis.sample import NO_AUGMENT, AugmentConfig, Sample, synthesize
from vimcan_core.synthesis.webcam import WebcamConfig

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(".cache") / "clips"
#: the paper's training window lengths: 9, 18, ..., 81 frames
PAPER_LENGTHS: tuple[int, ...] = tuple(range(9, 82, 9))


@dataclass(frozen=True)
class ClipEntry:
    path: Path
    subject: str = ""
    split: str = ""


def find_clips(data_dir: Path, split: str | None = None) -> list[ClipEntry]:
    """The BVH files of a data folder, optionally only one split (``train`` / ``val``)."""
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise MotionFileError(f"{data_dir}: no such data folder")
    if data_dir.is_file():
        entries = [ClipEntry(data_dir)]
    elif (data_dir / "index.csv").is_file():
        with open(data_dir / "index.csv", newline="", encoding="utf-8") as f:
            entries = [ClipEntry(data_dir / r["file"], r.get("subject", ""), r.get("split", "")) for r in csv.DictReader(f)]
    else:
        files = sorted(p for p in data_dir.rglob("*") if p.name.lower().endswith((".bvh", ".bvh.gz")))
        entries = [ClipEntry(p) for p in files]
    if split not in (None, "all"):
        entries = [e for e in entries if e.split == split]
    if not entries:
        raise MotionFileError(f"{data_dir}: no BVH clips found" + (f" in split {split!r}" if split else ""))
    return entries


def _cache_key(path: Path, config: RetargetConfig) -> str:
    st = path.stat()
    h = hashlib.sha1(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{config}".encode()).hexdigest()[:16]
    return f"{path.name.split('.')[0]}-{h}.npz"


def load_clip(path: Path, config: RetargetConfig = RetargetConfig(), cache_dir: Path | None = DEFAULT_CACHE_DIR) -> RetargetedClip:
    """A retargeted clip, from the cache when it is there."""
    path = Path(path)
    if cache_dir is None:
        return retarget_file(path, config)
    cache_dir = Path(cache_dir)
    cached = cache_dir / _cache_key(path, config)
    if cached.is_file():
        try:
            return RetargetedClip.load_npz(cached)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("ignoring a broken cache file %s (%s)", cached, exc)
    clip = retarget_file(path, config)
    cache_dir.mkdir(parents=True, exist_ok=True)
    # a name of this process's own: two trainings sharing the cache must not write one temp file
    tmp = cached.with_suffix(f".{os.getpid()}-{threading.get_ident()}.tmp.npz")
    clip.save_npz(tmp)
    tmp.replace(cached)
    return clip


def load_clips(
    data_dir: Path,
    split: str | None = None,
    config: RetargetConfig = RetargetConfig(),
    cache_dir: Path | None = DEFAULT_CACHE_DIR,
    min_frames: int = 9,
) -> list[RetargetedClip]:
    """Every clip of a data folder (one split), retargeted, skipping clips shorter than min_frames."""
    clips = []
    for e in find_clips(data_dir, split):
        clip = load_clip(e.path, config, cache_dir)
        if clip.num_frames < min_frames:
            log.warning("skipping %s: %d frames, fewer than %d", e.path, clip.num_frames, min_frames)
            continue
        clips.append(clip)
    log.info("%d clips, %.1f minutes from %s (split %s)", len(clips), sum(c.num_frames / c.fps for c in clips) / 60, data_dir, split)
    return clips


@dataclass(frozen=True)
class Batch:
    """Model inputs and targets, torch float32."""

    keypoints: torch.Tensor  # B x T x 17 x 3
    quats: torch.Tensor  # B x T x 6 x 4
    imu_valid: torch.Tensor  # B x T x 6 bool
    target: torch.Tensor  # B x T x 17 x 3, root-relative camera frame, metres

    @staticmethod
    def stack(samples: list[Sample]) -> "Batch":
        return Batch(
            keypoints=torch.from_numpy(np.stack([s.keypoints for s in samples])).float(),
            quats=torch.from_numpy(np.stack([s.quats for s in samples])).float(),
            imu_valid=torch.from_numpy(np.stack([s.imu_valid for s in samples])),
            target=torch.from_numpy(np.stack([s.target for s in samples])).float(),
        )


@dataclass(frozen=True)
class SamplerConfig:
    lengths: tuple[int, ...] = PAPER_LENGTHS  # window lengths, one drawn per batch
    realistic_prob: float = 0.5  # share of windows with the realistic noise preset (the rest clean)
    augment: AugmentConfig = AugmentConfig()
    webcam: WebcamConfig = WebcamConfig()


class WindowSampler:
    """Random training windows: a clip drawn in proportion to its length, a random start, a
    random webcam, noise and augmentation (``vimcan_core.synthesis``)."""

    def __init__(self, clips: list[RetargetedClip], config: SamplerConfig = SamplerConfig()) -> None:
        if not clips:
            raise MotionFileError("no training clips")
        self.clips = clips
        self.config = config
        n = np.array([c.num_frames for c in clips], dtype=np.float64)
        self._weights = n / n.sum()

    def sample(self, rng: np.random.Generator, length: int) -> Sample:
        clip = self.clips[int(rng.choice(len(self.clips), p=self._weights))]
        t = min(length, clip.num_frames)
        start = int(rng.integers(0, clip.num_frames - t + 1))
        noise = NoisePreset.REALISTIC if rng.random() < self.config.realistic_prob else NoisePreset.CLEAN
        s = synthesize(
            clip.joints_world_m[start : start + t], clip.bone_quats[start : start + t], clip.fps, rng, noise,
            self.config.augment, self.config.webcam,
        )
        if t < length:  # a clip shorter than the window: repeat its last frame
            pad = length - t
            s = Sample(
                keypoints=np.concatenate((s.keypoints, np.repeat(s.keypoints[-1:], pad, 0))),
                quats=np.concatenate((s.quats, np.repeat(s.quats[-1:], pad, 0))),
                imu_valid=np.concatenate((s.imu_valid, np.repeat(s.imu_valid[-1:], pad, 0))),
                target=np.concatenate((s.target, np.repeat(s.target[-1:], pad, 0))),
                camera=s.camera,
            )
        return s

    def batch(self, rng: np.random.Generator, batch_size: int, length: int | None = None) -> Batch:
        length = int(rng.choice(self.config.lengths)) if length is None else length
        return Batch.stack([self.sample(rng, length) for _ in range(batch_size)])


@dataclass(frozen=True)
class EvalClip:
    """One clip synthesised for evaluation with a fixed webcam and noise."""

    name: str
    sample: Sample
    noise: NoisePreset
    seed: int = 0


def clip_seed(seed: int, name: str) -> int:
    """A per-clip seed that does not depend on the order of the clips."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**32)


def make_eval_clips(clips: list[RetargetedClip], noise: NoisePreset, seed: int = 0) -> list[EvalClip]:
    """Every clip synthesised once, deterministically for a seed (one webcam per clip, no
    augmentation)."""
    out = []
    for c in clips:
        rng = np.random.default_rng(clip_seed(seed, c.name))
        s = synthesize(c.joints_world_m, c.bone_quats, c.fps, rng, noise, NO_AUGMENT)
        out.append(EvalClip(name=c.name, sample=s, noise=noise, seed=seed))
    return out
