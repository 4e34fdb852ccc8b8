"""Mirroring the model's inputs equals the inputs of the mirrored scene, and flip averaging is
the mean of the two predictions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.vimcan_core.tiny_model import TINY
from vimcan_core.camera import PinholeCamera, normalize_keypoints
from vimcan_core.dataset import load_clip
from vimcan_core.model import FusionMode, Vimcan, preset
from vimcan_core.model.mirror import flip_averaged, mirror_imu_valid, mirror_points, mirror_quats
from vimcan_core.rotations import quat_angle, quat_mul
from vimcan_core.synthesis.augment import mirror



def _inputs(camera: PinholeCamera, joints_world: np.ndarray, bones_world: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs of a scene: normalised keypoints T x 17 x 2 and bone-in-camera quats T x 6 x 4."""
    kp = normalize_keypoints(camera.project(joints_world), camera.width_px, camera.height_px)
    return kp, quat_mul(np.asarray(camera.quat_cam_from_world), bones_world)


def test_mirrored_inputs_are_the_inputs_of_the_mirrored_scene() -> None:
    """A webcam on the world's x = 0 plane sees the x -> -x mirrored performance as its mirrored
    image: mirroring the inputs in the camera frame gives exactly what the mirrored motion gives."""
    from tests.conftest import SHARED_DATA

    path = SHARED_DATA / "cmu" / "subjects" / "02" / "02_02.bvh.gz"
    if not path.is_file():
        pytest.skip("real data not found")
    clip = load_clip(path, cache_dir=None)
    j, q = clip.joints_world_m[:60] + np.array([0.3, 0.0, 0.0]), clip.bone_quats[:60]  # off-centre on purpose
    cam = PinholeCamera(width_px=1280, height_px=720, fx_px=900.0, fy_px=900.0, cx_px=640.0, cy_px=360.0)
    kp, qc = _inputs(cam, j, q)
    kp_m, qc_m = _inputs(cam, *mirror(j, q))
    kp3 = torch.from_numpy(np.concatenate((kp, np.ones_like(kp[..., :1])), axis=-1))
    np.testing.assert_allclose(mirror_points(kp3)[..., :2].numpy(), kp_m, atol=1e-9)
    assert quat_angle(mirror_quats(torch.from_numpy(qc)).numpy(), qc_m).max() < 1e-6
    assert (kp3[..., 0] != mirror_points(kp3)[..., 0]).any()  # not the identity
    valid = torch.tensor([True, False, True, True, False, True])
    assert mirror_imu_valid(valid).tolist() == [False, True, True, True, False, True]


@pytest.mark.parametrize("fusion", [FusionMode.CROSS_ATTENTION, FusionMode.VISION_ONLY])
def test_flip_averaged_is_the_mean_of_both_predictions(fusion) -> None:
    torch.manual_seed(0)
    model = Vimcan(preset("vimcan-t", fusion=fusion, **TINY)).eval()
    g = torch.Generator().manual_seed(1)
    kp = torch.rand(2, 9, 17, 3, generator=g) * 2 - 1
    q = torch.nn.functional.normalize(torch.randn(2, 9, 6, 4, generator=g), dim=-1)
    valid = torch.rand(2, 9, 6, generator=g) > 0.2
    with torch.no_grad():
        out = flip_averaged(model, kp, q, valid)
        plain = model(kp, q, valid)
        mirrored = mirror_points(model(mirror_points(kp), mirror_quats(q), mirror_imu_valid(valid)))
        assert out.shape == (2, 9, 17, 3)
        torch.testing.assert_close(out, 0.5 * (plain + mirrored), rtol=1e-5, atol=1e-6)
        assert (out - plain).abs().max() > 1e-4  # a random network is not mirror-symmetric
        # the average is exactly mirror-equivariant
        torch.testing.assert_close(flip_averaged(model, mirror_points(kp), mirror_quats(q), mirror_imu_valid(valid)),
                                   mirror_points(out), rtol=1e-5, atol=1e-6)
