"""Dataset: the CMU split, the clip cache, training windows and deterministic evaluation sets."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from vimcan_core.dataset import (
    PAPER_LENGTHS,
    SamplerConfig,
    WindowSampler,
    find_clips,
    load_clip,
    load_clips,
    make_eval_clips,
)
from vimcan_core.errors import MotionFileError
from vimcan_core.retarget import RetargetConfig
from vimcan_core.synthesis.noise import NoisePreset


def test_cmu_split_keeps_the_validation_subjects_apart(shared_data: Path) -> None:
    train = find_clips(shared_data / "cmu", "train")
    val = find_clips(shared_data / "cmu", "val")
    assert len(train) == 142 and len(val) == 24
    assert {e.subject for e in val} == {"02", "06"}
    assert not {e.subject for e in train} & {"02", "06"}
    assert all(e.path.is_file() for e in train + val)


def test_any_folder_of_bvh_files_is_found_recursively(shared_data: Path, tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    shutil.copy(shared_data / "cmu" / "plain" / "09_03.bvh", tmp_path / "a" / "b" / "run.bvh")
    shutil.copy(shared_data / "cmu" / "subjects" / "02" / "02_01.bvh.gz", tmp_path / "walk.BVH.gz")
    (tmp_path / "notes.txt").write_text("not motion")
    assert sorted(e.path.name for e in find_clips(tmp_path)) == ["run.bvh", "walk.BVH.gz"]
    with pytest.raises(MotionFileError, match="no BVH clips"):
        find_clips(tmp_path / "a", "val")


def test_clips_are_cached_and_the_cache_is_keyed_by_the_settings(shared_data: Path, tmp_path: Path) -> None:
    path = shared_data / "cmu" / "subjects" / "06" / "06_01.bvh.gz"
    a = load_clip(path, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    b = load_clip(path, cache_dir=tmp_path)
    np.testing.assert_allclose(b.joints_world_m, a.joints_world_m, atol=1e-6)  # stored as float32
    assert b.name == "06_01" and b.fps == 30.0
    load_clip(path, RetargetConfig(fps=60.0), cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2


@pytest.fixture(scope="module")
def val_clips():
    from tests.conftest import SHARED_DATA

    if not (SHARED_DATA / "cmu").is_dir():
        pytest.skip("real data not found")
    return load_clips(SHARED_DATA / "cmu", "val", cache_dir=None)


def test_training_windows_shapes_lengths_and_seeds(val_clips) -> None:
    sampler = WindowSampler(val_clips, SamplerConfig())
    lengths = set()
    for k in range(12):
        b = sampler.batch(np.random.default_rng(k), 4)
        lengths.add(b.keypoints.shape[1])
        t = b.keypoints.shape[1]
        assert b.keypoints.shape == (4, t, 17, 3) and b.quats.shape == (4, t, 6, 4)
        assert b.imu_valid.shape == (4, t, 6) and b.target.shape == (4, t, 17, 3)
        assert float(b.target[..., 0, :].abs().max()) == 0.0  # root-relative
        np.testing.assert_allclose(b.quats.norm(dim=-1).numpy(), 1.0, atol=1e-5)
    assert lengths <= set(PAPER_LENGTHS) and len(lengths) >= 4
    a1 = sampler.batch(np.random.default_rng(99), 3)
    a2 = sampler.batch(np.random.default_rng(99), 3)
    assert (a1.keypoints == a2.keypoints).all() and (a1.target == a2.target).all()


def test_a_window_longer_than_the_clip_repeats_its_last_frame(val_clips) -> None:
    short = min(val_clips, key=lambda c: c.num_frames)
    sampler = WindowSampler([short])
    s = sampler.sample(np.random.default_rng(0), short.num_frames + 10)
    assert s.keypoints.shape[0] == short.num_frames + 10
    np.testing.assert_array_equal(s.target[-10:], np.repeat(s.target[short.num_frames - 1 : short.num_frames], 10, 0))


def test_evaluation_sets_are_deterministic_and_independent_of_clip_order(val_clips) -> None:
    few = val_clips[:4]
    a = make_eval_clips(few, NoisePreset.REALISTIC, seed=3)
    b = make_eval_clips(list(reversed(few)), NoisePreset.REALISTIC, seed=3)
    by_name = {c.name: c for c in b}
    for c in a:
        np.testing.assert_array_equal(c.sample.keypoints, by_name[c.name].sample.keypoints)
        np.testing.assert_array_equal(c.sample.quats, by_name[c.name].sample.quats)
    other = make_eval_clips(few[:1], NoisePreset.REALISTIC, seed=4)
    assert not np.allclose(other[0].sample.keypoints, a[0].sample.keypoints)
