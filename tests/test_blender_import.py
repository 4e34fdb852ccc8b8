"""The real client: Blender's own BVH importer reads our BVH files and puts every joint where
we recorded it (within 1 mm), in metres and centimetres, ZXY and ZYX.

Runs ``blender --background --factory-startup`` (Debian package ``blender``); skipped when it
is not installed. Blender 3.4's importer opens files with mode ``'rU'``, which Python 3.11
refuses; the script run inside Blender drops the ``U`` from ``open``'s mode before importing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from vimcan_core.bvh.writer import BvhWriterConfig, LengthUnit, RotationOrder, write_bvh
from vimcan_core.kinematics import forward_kinematics
from vimcan_core.rotations import quat_from_rotvec
from vimcan_core.skeleton import IMU_JOINT, JOINT_NAMES, PARENTS, default_rest_pose

BLENDER = shutil.which("blender")

_SCRIPT = r"""
import builtins, json, sys
_open = builtins.open
def _open_without_u(file, mode="r", *args, **kwargs):
    if isinstance(mode, str):
        mode = mode.replace("U", "")  # Blender 3.4's importer asks for 'rU' (gone in Python 3.11)
    return _open(file, mode, *args, **kwargs)
builtins.open = _open_without_u
import bpy
jobs = json.loads(sys.argv[sys.argv.index("--") + 1])
result = {}
for job in jobs:
    bpy.ops.import_anim.bvh(filepath=job["path"], global_scale=job["scale"], rotate_mode="NATIVE",
                            frame_start=1, use_fps_scale=False, axis_forward="-Z", axis_up="Y")
    ob = bpy.context.object
    frames = {}
    for f in job["frames"]:
        bpy.context.scene.frame_set(f + 1)  # BVH frame 0 is Blender frame 1
        mw = ob.matrix_world
        frames[str(f)] = {pb.name: [list(mw @ pb.head), list(mw @ pb.tail)] for pb in ob.pose.bones}
    result[job["path"]] = {"frames": frames, "type": ob.type, "bones": len(ob.pose.bones)}
with _open(job["out"], "w") as f:
    json.dump(result, f)
"""


def _motion(T: int = 120):
    rng = np.random.default_rng(7)
    t = np.arange(T) / 30.0
    rotvec = 0.7 * np.sin(2 * np.pi * rng.uniform(0.2, 0.6, (17, 3)) * t[:, None, None] + rng.uniform(0, 6, (17, 3)))
    rotvec[:, 0, 1] = 2.0 * t  # turning on the spot
    root = np.stack((0.4 * np.sin(t), 0.9 + 0.05 * np.cos(2 * t), 0.3 * t), axis=-1)
    pos, glob = forward_kinematics(quat_from_rotvec(rotvec), root, default_rest_pose().scaled(1.05))
    return pos, root, glob[:, list(IMU_JOINT)]


def _joints_from_blender(bones: dict[str, list[list[float]]]) -> np.ndarray:
    """17 x 3 joints, converted back from Blender's Z-up to our Y-up: (x, y, z)_bvh = (x, z, -y)_blender."""
    out = np.zeros((17, 3))
    for j, name in enumerate(JOINT_NAMES):
        head_or_tail = bones[name][0] if name in bones else bones[JOINT_NAMES[PARENTS[j]]][1]
        x, y, z = head_or_tail
        out[j] = (x, z, -y)
    return out


@pytest.mark.skipif(BLENDER is None, reason="blender is not installed (apt-get install blender)")
def test_blender_imports_our_bvh_with_joints_where_we_recorded_them(output_dir: Path) -> None:
    pos, root, bone_quats = _motion()
    variants = [
        ("m_zxy", BvhWriterConfig(), 1.0),
        ("cm_zyx", BvhWriterConfig(order=RotationOrder.ZYX, units=LengthUnit.CENTIMETRES), 0.01),
    ]
    frames = [0, 17, 63, len(pos) - 1]
    jobs = []
    for name, cfg, scale in variants:
        path = output_dir / f"{name}.bvh"
        write_bvh(path, pos - pos[:, :1], 1 / 30, root_m=root, bone_quats_world=bone_quats, config=cfg)
        jobs.append({"path": str(path), "scale": scale, "frames": frames, "out": str(output_dir / "blender.json")})
    proc = subprocess.run(
        [BLENDER, "--background", "--factory-startup", "--python-expr", _SCRIPT, "--", json.dumps(jobs)],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0 and (output_dir / "blender.json").exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((output_dir / "blender.json").read_text())
    for job in jobs:
        r = result[job["path"]]
        assert r["type"] == "ARMATURE" and r["bones"] == 12
        for f in frames:
            got = _joints_from_blender(r["frames"][str(f)])
            err_mm = 1000 * np.linalg.norm(got - pos[f], axis=-1)
            assert err_mm.max() < 1.0, (job["path"], f, JOINT_NAMES[int(np.argmax(err_mm))], err_mm.max())
