"""The live pose stage: the streaming VIMCAN network, one step per synchronised frame.

``ModelPoseSource`` turns a ``SyncedFrame`` into the model's inputs, steps the streaming
estimator (``vimcan_core.live.StreamingPoseEstimator``: the model, its carried state and
the device it runs on) and turns the output back into a world-frame ``PoseFrame``::

    keypoints px -> camera.normalize_keypoints, confidence      -> 17 x 3
    IMU quats (sensor-to-own-world) -> calibration.bone_quats_camera -> 6 x 4 (q_cam_from_bone)
    imu_valid = present and calibrated                          -> 6
    model: root-relative joints, camera frame (17 x 3)
      -> scaled to the performer's height when it is known (``set_performer_height``)
      -> world (Y up): rotated by calibration.quat_world_from_camera
      -> pelvis position: the translation that best reprojects the joints onto the keypoints
         (linear least squares, when the camera's intrinsics are known)

Missing inputs are handled as a user expects (``status`` says which case holds):

* camera lost (person out of view): the model keeps going on the IMUs (keypoint confidence
  0); the pose's confidence drops (``SourceStatus.IMU_ONLY``); the pelvis stays where it was
  last seen;
* some IMUs lost: the model keeps going with those sensors masked (``SourceStatus.PARTIAL``);
  ``PoseFrame.imu_present`` flags which;
* everything lost: the last pose is frozen, confidence 0, and ``status_message`` says why
  (``SourceStatus.FROZEN``); after ``reset_after_s`` frozen the model's state is cleared, so
  old context does not leak into the new take.

The confidence of a pose is ``0.5 * mean keypoint confidence + 0.5 * fraction of valid IMUs``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from sensors.samples import PoseFrame, SyncedFrame
from vimcan_core.body_scale import LiveHeightScaler
from vimcan_core.camera import PinholeCamera, normalize_keypoints
from vimcan_core.errors import CheckpointError
from vimcan_core.rotations import IDENTITY_QUAT, quat_rotate
from vimcan_core.skeleton import IMU_SITE_NAMES, NUM_IMUS, NUM_JOINTS, default_rest_pose

if TYPE_CHECKING:
    from vimcan_core.calibration import Calibration

log = logging.getLogger(__name__)


class StreamingEstimator(Protocol):
    """What ``ModelPoseSource`` needs from ``vimcan_core.live.StreamingPoseEstimator``."""

    def reset(self) -> None: ...

    def step(self, keypoints: np.ndarray, quats: np.ndarray, imu_valid: np.ndarray) -> np.ndarray:
        """keypoints 17 x 3 (x, y normalised, confidence), quats 6 x 4 (bone-in-camera),
        imu_valid 6 bool -> 17 x 3 root-relative joints, camera frame, metres."""
        ...


class SourceStatus(Enum):
    """Which inputs the last pose was made from."""

    WAITING = "waiting"  # no frame yet
    OK = "ok"  # camera and all six IMUs
    PARTIAL = "partial"  # camera and some IMUs
    IMU_ONLY = "imu_only"  # no camera: the IMUs alone
    CAMERA_ONLY = "camera_only"  # no IMU: the camera alone
    FROZEN = "frozen"  # nothing usable: the last pose is held


@dataclass(frozen=True)
class ModelSourceConfig:
    """Behaviour of the model pose stage."""

    min_keypoint_confidence: float = 0.1  # below this a keypoint counts as not seen
    reset_after_s: float = 2.0  # frozen this long: clear the model's temporal state
    solve_root: bool = True  # estimate the pelvis position from the keypoints (needs the camera model)
    # torch intra-op threads when the model runs on the CPU (process-wide; None: leave torch's
    # default). One frame is too little work to split: on a busy 2-core machine one thread
    # stepped vimcan-t in 30 ms, two threads in 245 ms.
    cpu_threads: int | None = 1


class ModelPoseSource:
    """``PoseSource`` running the streaming VIMCAN network.

    Args:
        estimator: the streaming estimator (``vimcan_core.live.StreamingPoseEstimator``).
        calibration: a ``vimcan_core.calibration.Calibration`` (IMU to bone-in-camera and camera
            to world); may be given later with ``set_calibration`` (until then the IMUs are unused).
        camera: the camera's model, for the pelvis position (optional).
        config: behaviour.
    """

    def __init__(self, estimator: StreamingEstimator, calibration: "Calibration | None" = None,
                 camera: PinholeCamera | None = None, config: ModelSourceConfig | None = None) -> None:
        self.estimator = estimator
        self.calibration = calibration
        self.camera = camera
        self.config = config or ModelSourceConfig()
        self.name = describe_estimator(estimator)
        self.status = SourceStatus.WAITING
        self.status_message = "waiting for the first frame"
        self._last: PoseFrame | None = None
        self._last_root: np.ndarray | None = None
        self._frozen_since: float | None = None
        self._needs_reset = False
        self._scaler: LiveHeightScaler | None = None
        self._apply_cpu_threads()

    def _apply_cpu_threads(self) -> None:
        threads = self.config.cpu_threads
        if threads is None or "cuda" in self.backend.lower():
            return
        import torch

        if torch.get_num_threads() != threads:
            log.info("torch intra-op threads %d -> %d for the live model on the CPU", torch.get_num_threads(), threads)
            torch.set_num_threads(threads)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(cls, path: str | Path, calibration: "Calibration | None" = None, camera: PinholeCamera | None = None,
                        device: str | None = None, config: ModelSourceConfig | None = None) -> "ModelPoseSource":
        """Load streaming weights (``resources/models/vimcan-t-streaming.pt``) into a
        ``vimcan_core.live.StreamingPoseEstimator`` on ``device`` (None: CUDA when available, else CPU)."""
        try:
            from vimcan_core.live import StreamingPoseEstimator
        except ImportError:  # the live module is not there: step the model directly
            log.warning("vimcan_core.live is not available: stepping the model with the minimal built-in estimator")
            return cls(TorchStepEstimator.from_checkpoint(path, device), calibration, camera, config)
        estimator = StreamingPoseEstimator(Path(path), device=device or "auto")
        return cls(estimator, calibration=calibration, camera=camera, config=config)

    @property
    def backend(self) -> str:
        """Where the network runs, for the status panel."""
        return str(getattr(self.estimator, "backend", None) or getattr(self.estimator, "device", "cpu"))

    def set_calibration(self, calibration: "Calibration", camera: PinholeCamera | None = None) -> None:
        """Use a new calibration (after the wizard or a heading reset); thread-safe enough:
        one attribute is replaced and read once per frame."""
        self.calibration = calibration
        if camera is not None:
            self.camera = camera

    @property
    def performer_height_m(self) -> float | None:
        """The height the poses are scaled to (None: the network's own size)."""
        scaler = self._scaler
        return None if scaler is None else scaler.height_m

    @property
    def performer_scale(self) -> float | None:
        """The factor the network's skeleton is scaled by now (None: no height given)."""
        scaler = self._scaler
        return None if scaler is None else scaler.factor

    def set_performer_height(self, height_m: float | None) -> None:
        """Scale the poses so that the skeleton is ``height_m`` tall (``vimcan_core.body_scale``;
        None: keep the network's guess). One attribute is replaced, read once per frame."""
        self._scaler = None if height_m is None else LiveHeightScaler(height_m)

    # ------------------------------------------------------------------ PoseSource
    def reset(self) -> None:
        self.estimator.reset()
        if self._scaler is not None:
            self._scaler.reset()
        self.status = SourceStatus.WAITING
        self.status_message = "waiting for the first frame"
        self._last = None
        self._last_root = None
        self._frozen_since = None
        self._needs_reset = False

    def model_inputs(self, frame: SyncedFrame, calibration: "Calibration | None" = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """(keypoints 17 x 3, quats 6 x 4 bone-in-camera, imu_valid 6, bone quats in the world 6 x 4 or None),
        with ``calibration`` (default: the current one)."""
        kp = np.zeros((NUM_JOINTS, 3))
        if frame.camera_present and frame.image_size_px is not None:
            w, h = frame.image_size_px
            conf = np.clip(np.nan_to_num(np.asarray(frame.keypoint_confidence, dtype=np.float64)), 0.0, 1.0)
            xy = np.asarray(frame.keypoints_px, dtype=np.float64)
            seen = (conf >= self.config.min_keypoint_confidence) & np.isfinite(xy).all(axis=-1)
            kp[:, :2] = np.where(seen[:, None], normalize_keypoints(np.nan_to_num(xy), w, h), 0.0)
            kp[:, 2] = np.where(seen, conf, 0.0)
        quats = np.tile(IDENTITY_QUAT, (NUM_IMUS, 1))
        valid = np.zeros(NUM_IMUS, bool)
        bones_world = None
        cal = self.calibration if calibration is None else calibration
        if cal is not None:
            raw = np.where(frame.imu_present[:, None], frame.imu_quat_wxyz, np.nan)
            bones_cam = np.asarray(cal.bone_quats_camera(raw), dtype=np.float64)
            bones_world = np.asarray(cal.bone_quats_world(raw), dtype=np.float64)
            valid = frame.imu_present & np.isfinite(bones_cam).all(axis=-1)
            quats[valid] = bones_cam[valid]
        return kp, quats, valid, bones_world

    def estimate(self, frame: SyncedFrame) -> PoseFrame:
        cal = self.calibration  # read once: set_calibration may replace it from another thread
        kp, quats, valid, bones_world = self.model_inputs(frame, cal)
        camera_seen = bool(kp[:, 2].max() > 0)
        n_imus = int(valid.sum())
        if not camera_seen and n_imus == 0:
            return self._freeze(frame)
        if self._needs_reset:
            self.estimator.reset()
            self._needs_reset = False
        self._frozen_since = None
        joints_cam = np.asarray(self.estimator.step(kp, quats, valid), dtype=np.float64).reshape(NUM_JOINTS, 3)
        scaler = self._scaler  # read once: set_performer_height may replace it from another thread
        if scaler is not None:
            joints_cam = scaler(joints_cam)  # the performer's size (before the root solve: it sets the depth)
        q_wc = np.asarray(cal.quat_world_from_camera, dtype=np.float64) if cal is not None else _world_from_camera(self.camera)
        joints_world = quat_rotate(q_wc, joints_cam - joints_cam[:1])
        root = self._solve_root(joints_cam, kp, frame, q_wc) if camera_seen else None
        if root is not None:
            self._last_root = root
        confidence = 0.5 * float(kp[:, 2].mean()) + 0.5 * n_imus / NUM_IMUS
        if camera_seen and n_imus == NUM_IMUS:
            self._set_status(SourceStatus.OK, "camera and all six IMUs")
        elif camera_seen and n_imus:
            missing = ", ".join(_site_name(i) for i in np.flatnonzero(~valid))
            self._set_status(SourceStatus.PARTIAL, f"IMU missing: {missing}")
        elif camera_seen:
            self._set_status(SourceStatus.CAMERA_ONLY, "no IMU: running on the camera alone" if cal is not None
                             else "not calibrated: running on the camera alone")
        else:
            self._set_status(SourceStatus.IMU_ONLY, "camera lost (person out of view?): running on the IMUs alone")
        pose = PoseFrame(
            frame_index=frame.frame_index,
            time_s=frame.time_s,
            joints_world_m=joints_world,
            root_world_m=None if self._last_root is None else self._last_root.copy(),
            source=self.name,
            camera_present=camera_seen,
            imu_present=valid.copy(),
            confidence=confidence,
            sample_host_time_s=frame.sample_host_time_s,
            bone_quats_world=bones_world,
        )
        self._last = pose
        return pose

    # ------------------------------------------------------------------ helpers
    def _set_status(self, status: SourceStatus, message: str) -> None:
        if status != self.status:
            log.info("%s: %s", self.name, message)
        self.status, self.status_message = status, message

    def _freeze(self, frame: SyncedFrame) -> PoseFrame:
        if self._frozen_since is None:
            self._frozen_since = frame.time_s
        elif frame.time_s - self._frozen_since > self.config.reset_after_s:
            self._needs_reset = True
        why = "no camera keypoints and no IMU" + ("" if self.calibration is not None else " (IMUs not calibrated)")
        self._set_status(SourceStatus.FROZEN, f"pose frozen: {why}; check that the person is in view and the sensors are on")
        if self._last is not None:
            joints, root, bones = self._last.joints_world_m, self._last.root_world_m, self._last.bone_quats_world
        else:
            rest = default_rest_pose().positions()
            joints, root, bones = rest - rest[0], None, None
        return PoseFrame(
            frame_index=frame.frame_index,
            time_s=frame.time_s,
            joints_world_m=joints.copy(),
            root_world_m=None if root is None else root.copy(),
            source=self.name,
            camera_present=False,
            imu_present=np.zeros(NUM_IMUS, bool),
            confidence=0.0,
            sample_host_time_s=frame.sample_host_time_s,
            bone_quats_world=None if bones is None else bones.copy(),
        )

    def _solve_root(self, joints_cam: np.ndarray, kp: np.ndarray, frame: SyncedFrame,
                    q_world_from_camera: np.ndarray) -> np.ndarray | None:
        """The pelvis in the world (3, metres): solved in the camera frame, then turned by the same
        rotation as the joints (the calibration's, when there is one: a profile's camera may carry
        only its lens) and placed at the camera's position."""
        cam = self.camera
        if not self.config.solve_root or cam is None or frame.keypoints_px is None:
            return None
        t_cam = solve_root_translation(joints_cam - joints_cam[:1], frame.keypoints_px, kp[:, 2], cam)
        if t_cam is None:
            return None
        return quat_rotate(q_world_from_camera, t_cam) + np.asarray(cam.position_world_m, dtype=np.float64)


def solve_root_translation(joints_rel_cam_m: np.ndarray, keypoints_px: np.ndarray, confidence: np.ndarray,
                           camera: PinholeCamera, min_joints: int = 4) -> np.ndarray | None:
    """The pelvis position in the camera frame (3, metres) that best reprojects root-relative
    joints (17 x 3, camera frame) onto keypoints (17 x 2 px), weighted by confidence (17).

    Each seen joint gives two equations linear in T: ``X + Tx = x' (Z + Tz)`` and
    ``Y + Ty = y' (Z + Tz)`` with ``x' = (u - cx) / fx``, ``y' = (v - cy) / fy``. None when fewer
    than ``min_joints`` joints are seen or the solution is behind the camera."""
    conf = np.nan_to_num(np.asarray(confidence, dtype=np.float64))
    uv = np.asarray(keypoints_px, dtype=np.float64)
    seen = (conf > 0) & np.isfinite(uv).all(axis=-1)
    n = int(seen.sum())
    if n < min_joints:
        return None
    rel = np.asarray(joints_rel_cam_m, dtype=np.float64)[seen]
    xn = (uv[seen, 0] - camera.cx_px) / camera.fx_px
    yn = (uv[seen, 1] - camera.cy_px) / camera.fy_px
    a = np.zeros((2 * n, 3))
    b = np.zeros(2 * n)
    a[0::2, 0], a[0::2, 2] = 1.0, -xn
    a[1::2, 1], a[1::2, 2] = 1.0, -yn
    b[0::2] = xn * rel[:, 2] - rel[:, 0]
    b[1::2] = yn * rel[:, 2] - rel[:, 1]
    w = np.repeat(np.sqrt(conf[seen]), 2)
    sol, *_ = np.linalg.lstsq(a * w[:, None], b * w, rcond=None)
    if not np.all(np.isfinite(sol)) or sol[2] <= 0.1:
        return None
    return sol


def describe_estimator(estimator: object) -> str:
    """What the status bar shows, e.g. "VIMCAN-T streaming, cpu / fused C kernel"."""
    text = getattr(estimator, "description", None) or getattr(estimator, "name", None)
    if text:
        return str(text)
    label = "VIMCAN"
    config = getattr(getattr(estimator, "model", None), "config", None)
    if config is not None:
        try:
            import dataclasses

            from vimcan_core.model.config import PRESETS

            for preset_name, preset_config in PRESETS.items():
                if dataclasses.replace(config, streaming=preset_config.streaming, dropout=preset_config.dropout) == preset_config:
                    label = preset_name.upper()
                    break
        except Exception:  # naming must never stop the pose stage
            log.debug("could not name the model", exc_info=True)
        if label == "VIMCAN":  # not a preset: say what it was trained from, and its widths
            import re

            command = str((getattr(estimator, "metadata", None) or {}).get("shipped", ""))
            match = re.search(r"--preset\s+(\S+)", command)
            base = match.group(1).upper() if match else "VIMCAN"
            label = f"{base} (De {getattr(config, 'embed_dim', '?')}, Dg {getattr(config, 'fused_dim', '?')})"
    streaming = " streaming" if getattr(config, "streaming", True) else ""
    backend = getattr(estimator, "backend", None)
    return f"{label}{streaming}" + (f", {backend}" if backend else "")


def _world_from_camera(camera: PinholeCamera | None) -> np.ndarray:
    """Without a calibration: the camera's own pose, or identity."""
    if camera is None:
        return IDENTITY_QUAT
    q = np.asarray(camera.quat_cam_from_world, dtype=np.float64)
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def _site_name(i: int) -> str:
    return IMU_SITE_NAMES[int(i)].replace("_", " ")


class TorchStepEstimator:
    """A minimal streaming estimator: a streaming ``Vimcan`` stepped one frame at a time.

    ``vimcan_core.live.StreamingPoseEstimator`` is the full one (device selection, backends);
    this one is the fallback when that module is absent, and the benchmark's random-weights model."""

    def __init__(self, model: Any, device: str | None = None, description: str | None = None) -> None:
        import torch

        if isinstance(model, (str, Path)):
            from vimcan_core.model.checkpoint import load_checkpoint

            model, _meta = load_checkpoint(model, device="cpu")
            if not model.config.streaming:
                raise CheckpointError("not a streaming checkpoint; live inference needs preset(..., streaming=True) weights")
        self._torch = torch
        device = None if device == "auto" else device
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.eval().to(self.device)
        self.state = self.model.init_state(1, self.device)
        self.backend = str(self.device)
        self.description = description or f"VIMCAN streaming, {self.device}"

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | None = None) -> "TorchStepEstimator":
        return cls(Path(path), device, description=f"VIMCAN streaming ({Path(path).name})")

    def reset(self) -> None:
        self.state = self.model.init_state(1, self.device)

    def step(self, keypoints: np.ndarray, quats: np.ndarray, imu_valid: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            out, self.state = self.model.step(
                torch.as_tensor(keypoints, dtype=torch.float32, device=self.device)[None],
                torch.as_tensor(quats, dtype=torch.float32, device=self.device)[None],
                torch.as_tensor(imu_valid, device=self.device)[None], self.state)
        return out[0].double().cpu().numpy()
