"""Re-exporting a take (BVH, CSV) and re-solving it offline with the bidirectional model.

``export_take`` writes the BVH and a world-position CSV of a take's poses with any units and
rotation order. ``resolve_take`` runs the bidirectional (non-causal) VIMCAN over the whole
recording and writes ``poses_resolved.csv`` and ``take_resolved.bvh`` beside the live ones:

* the camera frames of the take are the instants (inputs.csv: keypoints as recorded);
* the IMUs are paired again from raw.csv with the synchroniser's offline pairing
  (``sensors.sync.sample_times_offline`` + ``sync_offline``: clock offsets from the whole take,
  samples after each frame available) when take.json holds the calibration; otherwise the
  bone orientations the live pose stage used (poses.csv) are taken as they are;
* bone orientations go into the camera frame, the model's root-relative camera-frame joints
  are scaled to the performer's height when it is known (take.json or ``ResolveConfig``), come
  back into the world frame (Y up) and get the live root trajectory.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from sensors.sync import sample_times_offline, sync_offline
from vimcan_core.body_scale import scale_to_height
from vimcan_core.bvh.writer import BvhWriterConfig, build_clip, writable_frames
from vimcan_core.camera import PinholeCamera, normalize_keypoints
from vimcan_core.errors import CheckpointError, TakeError
from vimcan_core.rotations import quat_conj, quat_mul, quat_normalize, quat_rotate
from vimcan_core.skeleton import IMU_SITE_NAMES, JOINT_NAMES, NUM_IMUS, ImuSite
from vimcan_core.take import (
    POSE_COLUMNS,
    RESOLVED_BVH,
    TAKE_BVH,
    PoseTable,
    RawKind,
    TakeMeta,
    TakePaths,
    at_performer_height,
    csv_line,
    header_line,
    pose_row,
    read_inputs,
    read_meta,
    read_poses,
    read_raw,
    write_meta,
    write_take_bvh,
)

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = ROOT / "resources" / "models" / "vimcan-t.pt"


class PoseSet(Enum):
    """Which poses of a take to export."""

    LIVE = "live"  # poses.csv, as recorded
    RESOLVED = "resolved"  # poses_resolved.csv, after ``resolve_take``


@dataclass(frozen=True)
class ExportOptions:
    """What ``export_take`` writes."""

    bvh: bool = True  # take.bvh (take_resolved.bvh for the resolved poses)
    csv: bool = True  # joints_world_<units>.csv: world joint positions in the BVH's axes and units
    bvh_config: BvhWriterConfig = BvhWriterConfig()
    poses: PoseSet = PoseSet.LIVE
    out_dir: Path | None = None  # default: the take folder


def export_take(folder: str | Path, options: ExportOptions = ExportOptions()) -> list[Path]:
    """Write a take's BVH and/or world-position CSV; returns the files written."""
    paths = TakePaths(Path(folder))
    if not paths.folder.is_dir():
        raise TakeError(f"{paths.folder}: no such take folder")
    src = paths.poses if options.poses is PoseSet.LIVE else paths.resolved_poses
    if options.poses is PoseSet.RESOLVED and not src.exists():
        raise TakeError(f"{src}: missing; run `vimcan export --resolve {paths.folder}` first")
    poses = read_poses(src)
    if poses.num_frames == 0:
        raise TakeError(f"{src}: no frames to export (run `vimcan export --recover {paths.folder}` if it was interrupted)")
    out_dir = Path(options.out_dir) if options.out_dir is not None else paths.folder
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if options.bvh:
        name = TAKE_BVH if options.poses is PoseSet.LIVE else RESOLVED_BVH
        write_take_bvh(paths.folder, poses, out_dir / name, options.bvh_config)
        written.append(out_dir / name)
    if options.csv:
        written.append(_write_world_csv(poses, out_dir, options, paths.folder))
    return written


def _write_world_csv(poses: PoseTable, out_dir: Path, options: ExportOptions, folder: Path) -> Path:
    """joints_world_<u>.csv: time_s, <joint>_x/_y/_z world positions (with the BVH's root
    trajectory: the recorded one, or the fixed standing root when it is unknown; at the
    performer's height as the BVH), frame_index."""
    units = options.bvh_config.units
    ok = writable_frames(poses.joints_m)
    rel = at_performer_height(folder, poses.joints_m[ok])
    root_known = poses.root_m[ok]
    clip = build_clip(rel, poses.frame_time_s(), root_known if np.any(np.isfinite(root_known)) else None)
    world = (rel - rel[:, :1] + clip.root_m[:, None, :]) * units.per_metre  # T x 17 x 3
    suffix = "" if options.poses is PoseSet.LIVE else "_resolved"
    path = out_dir / f"joints_world_{units.value}{suffix}.csv"
    cols = ("time_s",) + tuple(f"{j}_{a}" for j in JOINT_NAMES for a in "xyz") + ("frame_index",)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(header_line(cols))
            for i, t, row in zip(poses.frame_index[ok], poses.time_s[ok], world.reshape(len(world), -1)):
                f.write(csv_line([float(t), *row.tolist(), int(i)]))
        tmp.replace(path)
    except OSError as exc:
        raise TakeError(f"{path}: cannot write ({exc.strerror or exc})") from exc
    return path


# --------------------------------------------------------------------------------------
# calibration stored in take.json


def calibration_to_dict(calibration: Any) -> dict[str, Any]:
    """The arrays of a ``vimcan_core.calibration.Calibration`` as JSON-able lists (for ``TakeMeta.calibration``)."""
    return {
        "q_bone_from_sensor": np.asarray(calibration.q_bone_from_sensor).tolist(),
        "q_camera_from_imuworld": np.asarray(calibration.q_camera_from_imuworld).tolist(),
        "acc_offset_mps2": np.asarray(calibration.acc_offset_mps2).tolist(),
        "quat_world_from_camera": np.asarray(calibration.quat_world_from_camera).tolist(),
    }


@dataclass(frozen=True)
class _StoredCalibration:
    q_bone_from_sensor: np.ndarray  # 6 x 4
    q_camera_from_imuworld: np.ndarray  # 6 x 4
    quat_world_from_camera: np.ndarray  # 4

    @staticmethod
    def from_dict(d: dict[str, Any], where: str) -> "_StoredCalibration":
        try:
            out = _StoredCalibration(
                np.array(d["q_bone_from_sensor"], dtype=np.float64).reshape(NUM_IMUS, 4),
                np.array(d["q_camera_from_imuworld"], dtype=np.float64).reshape(NUM_IMUS, 4),
                np.array(d["quat_world_from_camera"], dtype=np.float64).reshape(4),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TakeError(f"{where}: the calibration in take.json is incomplete ({exc})") from exc
        return out

    def bone_quats_camera(self, sensor_quats: np.ndarray) -> np.ndarray:
        """... x 6 x 4 sensor-to-IMU-world -> ... x 6 x 4 bone-to-camera (NaN stays NaN)."""
        return quat_normalize(quat_mul(quat_mul(self.q_camera_from_imuworld, sensor_quats), quat_conj(self.q_bone_from_sensor)))


# --------------------------------------------------------------------------------------
# resolve


@dataclass(frozen=True)
class ResolveConfig:
    """How a take is re-solved."""

    checkpoint: Path = DEFAULT_CHECKPOINT  # bidirectional weights (used when no model is passed)
    device: str = "auto"  # torch device: "auto" (CUDA when available, else the CPU), "cpu", "cuda"
    chunk_frames: int = 2048  # frames per model call (long takes are cut with overlap)
    overlap_frames: int = 64  # context on each side of a chunk, discarded after the call
    flip: bool = True  # average with the mirrored prediction of the mirrored inputs (0.5-1 mm P1, 1.3 mm P2; 2x the compute)
    repair_imus: bool = True  # pair the IMUs again from raw.csv (needs the calibration in take.json)
    max_staleness_s: float = 0.1  # the synchroniser's limit for a usable sample
    performer_height_m: float | None = None  # scale the skeleton to this height and store it in take.json (None: take.json's, if any)


@dataclass(frozen=True)
class ModelInputs:
    """The model's inputs for a whole take (T frames), as ``resolve_take`` builds them."""

    keypoints: np.ndarray  # T x 17 x 3: normalised x, y (camera.normalize_keypoints) and confidence
    quats_cam: np.ndarray  # T x 6 x 4: bone-to-camera, wxyz; identity where missing
    imu_valid: np.ndarray  # T x 6 bool
    q_world_from_camera: np.ndarray  # 4
    repaired: bool  # IMUs paired again from raw.csv


def _camera_of(meta: TakeMeta, folder: Path) -> PinholeCamera:
    if not meta.camera:
        raise TakeError(f"{folder / 'take.json'}: no camera model in the take; it is needed to normalise the keypoints")
    known = {f.name for f in fields(PinholeCamera)}
    try:
        return PinholeCamera(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in meta.camera.items() if k in known})
    except TypeError as exc:
        raise TakeError(f"{folder / 'take.json'}: invalid camera model ({exc})") from exc


def build_model_inputs(folder: str | Path, config: ResolveConfig = ResolveConfig()) -> ModelInputs:
    """Assemble the model inputs of a recorded take (see the module docstring)."""
    paths = TakePaths(Path(folder))
    meta = read_meta(paths.folder)
    camera = _camera_of(meta, paths.folder)
    inputs = read_inputs(paths.inputs)
    poses = read_poses(paths.poses)
    T = min(len(inputs.time_s), poses.num_frames)
    if T == 0:
        raise TakeError(f"{paths.folder}: no frames to re-solve")
    if not np.array_equal(inputs.frame_index[:T], poses.frame_index[:T]):
        raise TakeError(f"{paths.inputs} and {paths.poses}: frame indices differ; the take is damaged")
    # keypoints: B x T x 17 x 3, missing -> confidence 0 at the image centre
    w = np.where(np.isfinite(inputs.image_size_px[:T, 0]), inputs.image_size_px[:T, 0], camera.width_px)
    h = np.where(np.isfinite(inputs.image_size_px[:T, 1]), inputs.image_size_px[:T, 1], camera.height_px)
    kp = np.full((T, len(JOINT_NAMES), 2), np.nan)  # T x 17 x 2, normalised per image size
    for size in {(int(a), int(b)) for a, b in zip(w, h)}:
        sel = (w == size[0]) & (h == size[1])
        kp[sel] = normalize_keypoints(inputs.keypoints_px[:T][sel], size[0], size[1])
    conf = np.clip(np.nan_to_num(inputs.keypoint_confidence[:T], nan=0.0), 0.0, 1.0)
    seen = np.all(np.isfinite(kp), axis=-1)
    conf = np.where(seen, conf, 0.0)
    kp = np.where(seen[..., None], kp, 0.0)
    keypoints = np.concatenate((kp, conf[..., None]), axis=-1)

    q_c_w = np.asarray(camera.quat_cam_from_world, dtype=np.float64)
    quats_cam: np.ndarray | None = None
    repaired = False
    if config.repair_imus and meta.calibration:
        cal = _StoredCalibration.from_dict(meta.calibration, str(paths.meta))
        sensor_q, present = _repair_imus(paths, meta, inputs.time_s[:T], config)
        quats_cam = cal.bone_quats_camera(np.where(present[..., None], sensor_q, np.nan))
        q_c_w = quat_conj(cal.quat_world_from_camera)
        repaired = True
        valid = present & np.all(np.isfinite(quats_cam), axis=-1)
    if quats_cam is None:
        bone_w = poses.bone_quats_world[:T]
        valid = poses.imu_present[:T] & np.all(np.isfinite(bone_w), axis=-1)
        quats_cam = quat_mul(q_c_w, np.where(valid[..., None], bone_w, [1.0, 0, 0, 0]))
    quats_cam = quat_normalize(np.where(valid[..., None], quats_cam, [1.0, 0, 0, 0]))
    return ModelInputs(keypoints, quats_cam, valid, quat_conj(q_c_w), repaired)


def _repair_imus(paths: TakePaths, meta: TakeMeta, frame_times_s: np.ndarray, config: ResolveConfig) -> tuple[np.ndarray, np.ndarray]:
    """Sensor quaternions (F x 6 x 4) and presence (F x 6) at the frame times, from raw.csv."""
    raw = read_raw(paths.raw)
    tracks = {}
    for dev in meta.devices:
        if dev.site is None or dev.site not in IMU_SITE_NAMES:
            continue
        rows = raw.rows(RawKind.IMU, dev.device_id)
        if not np.any(rows):
            continue
        host = raw.time_s[rows]
        devt = raw.device_time_s[rows]
        times = sample_times_offline(host, devt if np.all(np.isfinite(devt)) else None)
        order = np.argsort(times, kind="stable")
        q = np.stack([raw.column(c)[rows] for c in ("qw", "qx", "qy", "qz")], axis=-1)
        tracks[ImuSite(IMU_SITE_NAMES.index(dev.site))] = (times[order], q[order], None)
    quats, _, present = sync_offline(frame_times_s, tracks, config.max_staleness_s)
    return quats, present


def _load_model(config: ResolveConfig) -> Any:
    path = Path(config.checkpoint)
    if not path.exists():
        raise CheckpointError(
            f"{path}: no bidirectional weights; train them with `vimcan train` or pass --checkpoint PATH"
        )
    from vimcan_core.live import pick_device  # torch only when re-solving
    from vimcan_core.model.checkpoint import load_checkpoint

    model, _ = load_checkpoint(path, device=pick_device(config.device))
    if getattr(getattr(model, "config", None), "streaming", False):
        raise CheckpointError(f"{path}: a streaming (causal) model; --resolve needs bidirectional weights")
    return model


def run_model(model: Any, inputs: ModelInputs, config: ResolveConfig = ResolveConfig()) -> np.ndarray:
    """T x 17 x 3 root-relative joints in the camera frame, metres, in overlapping chunks."""
    import torch

    from vimcan_core.live import pick_device
    from vimcan_core.model.mirror import flip_averaged

    T = inputs.keypoints.shape[0]
    device = pick_device(config.device)
    model = model.to(device).eval()
    out = np.empty((T, len(JOINT_NAMES), 3))
    step = max(1, config.chunk_frames)
    pad = max(0, config.overlap_frames)
    with torch.no_grad():
        for s in range(0, T, step):
            a, b = max(0, s - pad), min(T, s + step + pad)
            kp = torch.as_tensor(inputs.keypoints[a:b], dtype=torch.float32, device=device)[None]  # 1 x t x 17 x 3
            q = torch.as_tensor(inputs.quats_cam[a:b], dtype=torch.float32, device=device)[None]  # 1 x t x 6 x 4
            v = torch.as_tensor(inputs.imu_valid[a:b], device=device)[None]  # 1 x t x 6
            y = (flip_averaged(model, kp, q, v) if config.flip else model(kp, q, v))[0].double().cpu().numpy()  # t x 17 x 3
            e = min(T, s + step)
            out[s:e] = y[s - a : e - a]
    return out


def resolve_take(folder: str | Path, model: Any = None, config: ResolveConfig = ResolveConfig(),
                 bvh_config: BvhWriterConfig = BvhWriterConfig()) -> Path:
    """Re-solve a take with the bidirectional model; writes poses_resolved.csv and take_resolved.bvh.

    ``model``: a bidirectional ``Vimcan`` (default: ``config.checkpoint``). Returns the path
    of poses_resolved.csv."""
    paths = TakePaths(Path(folder))
    inputs = build_model_inputs(paths.folder, config)
    if model is None:
        model = _load_model(config)
    elif getattr(getattr(model, "config", None), "streaming", False):
        raise CheckpointError("resolve_take needs a bidirectional model (streaming=False)")
    joints_cam = run_model(model, inputs, config)  # T x 17 x 3
    meta = read_meta(paths.folder)
    height = config.performer_height_m if config.performer_height_m is not None else meta.performer_height_m
    if height is not None:
        if height != meta.performer_height_m:  # a height given now is the take's from now on (later exports keep it)
            write_meta(paths.folder, replace(meta, performer_height_m=height))
        joints_cam, factor = scale_to_height(joints_cam, height)
        log.info("%s: skeleton scaled by %.3f to the performer's height of %.2f m", paths.folder, factor, height)
    joints_world = quat_rotate(inputs.q_world_from_camera, joints_cam)
    joints_world = joints_world - joints_world[:, :1]
    live = read_poses(paths.poses)
    T = joints_world.shape[0]
    out = paths.resolved_poses
    tmp = out.with_name(out.name + ".tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as f:
            f.write(header_line(POSE_COLUMNS))
            for t in range(T):
                f.write(pose_row(
                    int(live.frame_index[t]), float(live.time_s[t]), joints_world[t],
                    None if not np.all(np.isfinite(live.root_m[t])) else live.root_m[t],
                    bool(live.camera_present[t]), live.imu_present[t], float(live.confidence[t]), live.bone_quats_world[t],
                ))
        tmp.replace(out)
    except OSError as exc:
        raise TakeError(f"{out}: cannot write ({exc.strerror or exc})") from exc
    write_take_bvh(paths.folder, read_poses(out), paths.resolved_bvh, bvh_config)
    log.info("re-solved %s: %d frames -> %s, %s (IMUs %s)", paths.folder, T, out.name, RESOLVED_BVH,
             "paired again from raw.csv" if inputs.repaired else "as paired live")
    return out
