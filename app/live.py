"""Glue between the window and the capture side (``sensors``): building the pipeline with the
right pose source, the recorder behind the record button, heading reset and calibration profiles.

Kept apart from the widgets so that the window only composes, and so that the headless demo and
the tests use the same choices. Nothing here imports Qt.
"""

from __future__ import annotations

import logging
import weakref
from pathlib import Path

import numpy as np

from app.settings import PoseSourceChoice, StudioSettings
from vimcan_core.errors import TakeError, VimcanError

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_WEIGHTS = ROOT / "resources" / "models" / "vimcan-t-streaming.pt"
RECORDER_QUEUE_SIZE = 256  # frames the take writer may lag behind (about 8 s at 30 Hz)
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")  # a bare camera setting naming a video file
#: the spec each live device was made from (to remember it in the settings); weak: devices come and go
_DEVICE_SPECS: "weakref.WeakKeyDictionary[object, str]" = weakref.WeakKeyDictionary()


def weights_path(settings: StudioSettings) -> Path:
    return Path(settings.model_path) if settings.model_path else SHIPPED_WEIGHTS


def limit_torch_threads() -> None:
    """One intra-op torch thread in the studio process: the live capture comes first. A batch of one
    frame gains nothing from more, and spinning worker threads starve the UI, the device threads and
    the pipeline (measured on 2 loaded cores: 64 ms per vimcan-t step with one thread, 1.8 s with
    two); an offline re-solve in the background then leaves the live view a core."""
    import torch

    if torch.get_num_threads() != 1:
        log.info("torch: 1 intra-op thread for live CPU inference (was %d)", torch.get_num_threads())
        torch.set_num_threads(1)


def make_pose_source(settings: StudioSettings, calibration=None, camera=None):
    """The streaming VIMCAN as pose source, or None (keep the pipeline's ground truth) with the reason logged.

    ``calibration`` (``vimcan_core.calibration.Calibration``) and ``camera`` (``PinholeCamera``) go to
    the model source: the demo passes its rig's exact ones; with hardware, the wizard's profile."""
    if settings.pose_source == PoseSourceChoice.GROUND_TRUTH:
        return None
    path = weights_path(settings)
    if not path.is_file():
        msg = f"no model weights at {path}: showing the simulation's ground truth instead of the model"
        (log.error if settings.pose_source == PoseSourceChoice.MODEL else log.warning)(msg)
        return None
    try:
        from sensors.model_source import ModelPoseSource
        from vimcan_core.live import StreamingPoseEstimator

        estimator = StreamingPoseEstimator(path)
        if estimator.device.type == "cpu":
            limit_torch_threads()
        source = ModelPoseSource(estimator, calibration=calibration, camera=camera)
    except (ImportError, VimcanError, OSError, RuntimeError, KeyError) as exc:
        log.error("could not load the model from %s (%s): showing the simulation's ground truth", path, exc)
        return None
    log.info("pose source: %s on %s", source.name, source.backend)
    return source


def uses_hardware(settings: StudioSettings) -> bool:
    """True when the settings name real devices (anything but the simulated defaults)."""
    return any(not spec.startswith("sim") for spec in settings.devices) or settings.camera not in ("sim", "")


def build_live_pipeline(settings: StudioSettings, demo: bool = True):
    """The capture pipeline the window shows.

    Demo: the simulated performer and sensors, with the model (given the rig's exact calibration)
    when its weights are found, else the simulation's ground truth. Hardware: the devices and
    camera of the settings, the IMU sites and calibration of the last profile, and the model."""
    if not demo:
        return build_hardware_pipeline(settings)
    from sensors.demo import build_demo_pipeline

    pipeline = build_demo_pipeline()
    rig = pipeline.demo
    source = make_pose_source(settings, calibration=rig.true_calibration(), camera=rig.camera_model)
    if source is not None:
        set_performer_height(source, rig.performer_height_m)  # as a user types it in the wizard
        pipeline.set_pose_source(source)
    return pipeline


def _profile_named(name: str):
    from vimcan_core.calibration_profile import list_profiles as _list, load_last_profile, load_profile

    if name:
        for path in _list():
            if path.stem == name:
                return load_profile(path)
        log.warning("calibration profile %r not found; using the last saved one", name)
    return load_last_profile()


def device_from_spec(spec: str):
    """The (not started) driver a spec names (``sensors.spec``); raises ``DeviceError`` with the fix.
    A bare camera source from older settings (index, file, URL) is read as ``camera:SOURCE``."""
    from sensors.spec import DEVICE_FACTORIES, create_device

    text = spec.strip()
    kind = text.partition(":")[0].lower()
    if kind not in DEVICE_FACTORIES and (text.isdigit() or "://" in text or Path(text).suffix.lower() in VIDEO_SUFFIXES):
        text = f"camera:{text}"
    device = create_device(text)
    _DEVICE_SPECS[device] = text
    return device


def spec_of(device) -> str | None:
    """The spec a device was made from in this session (None: made elsewhere)."""
    return _DEVICE_SPECS.get(device)


def build_hardware_pipeline(settings: StudioSettings):
    """A pipeline on real drivers: ``settings.devices`` (IMU specs) at ``settings.sites`` (or, without
    those, in site order), ``settings.camera`` (a ``camera:`` spec, or an index, file or URL; "" for
    none), the sites and calibration of the profile ``settings.last_profile`` when it names these
    sensors. With no devices at all it starts empty: add them in the devices panel."""
    from sensors.device import DeviceKind
    from sensors.pipeline import CapturePipeline
    from vimcan_core.skeleton import NUM_IMUS, ImuSite

    devices = [device_from_spec(spec) for spec in settings.devices]
    cameras = [d for d in devices if d.kind == DeviceKind.CAMERA]
    devices = [d for d in devices if d.kind != DeviceKind.CAMERA]
    profile = _profile_named(settings.last_profile)
    by_id = {d.device_id: d for d in devices}
    imus: dict = {}
    if profile is not None:
        for i, device_id in enumerate(profile.site_devices):
            if device_id is not None and device_id in by_id:
                imus[ImuSite(i)] = by_id[device_id]
    if not imus and devices:  # no profile for these sensors: the sites remembered with them, else their order
        named = [ImuSite.from_name(n) for n in settings.sites] if len(settings.sites) == len(settings.devices) else []
        if named and all(s is not None for s in named) and len(set(named)) == len(named):
            imus = {site: d for site, d in zip(named, devices)}
        else:
            log.warning("no calibration profile for these devices: IMU sites taken in the order given "
                        "(%s); run the calibration wizard (Ctrl+K)", ", ".join(s.name.lower() for s in ImuSite))
            imus = {ImuSite(i): d for i, d in enumerate(devices[:NUM_IMUS])}
    camera = cameras[0] if cameras else None
    if len(cameras) > 1:
        log.warning("the settings name %d cameras; using %s (the studio takes one)", len(cameras), camera.device_id)
    if camera is None and settings.camera not in ("", "sim", "none"):
        camera = device_from_spec(settings.camera)
    calibration = profile.calibration if profile is not None else None
    cam_model = profile.camera if profile is not None else None
    source = make_pose_source(settings, calibration=calibration, camera=cam_model)
    if source is not None and profile is not None:
        set_performer_height(source, profile.performer_height_m)
    if source is None:
        raise VimcanError(f"live capture needs the VIMCAN weights ({weights_path(settings)} not usable, see the log); "
                          "run `vimcan-studio --demo` to try the studio without them")
    if not imus and camera is None:
        log.info("no devices yet: add the IMUs and the camera in the Devices panel (spec and site, then Add)")
    return CapturePipeline(imus, camera, source)


# ----------------------------------------------------------------------------- devices at run time
def add_device(pipeline, spec: str, site=None):
    """Make the driver ``spec`` names and add it to ``pipeline`` (started when the pipeline runs).

    An IMU goes to ``site`` (an ``ImuSite``; None: the first free one); a camera becomes the
    pipeline's camera when it has none. The pipeline reads its ``imus`` mapping afresh for every
    frame (the synchroniser tracks devices by identity), so a new mapping is swapped in whole and
    the other devices keep streaming; a camera joins a pipeline that has none the same way.
    Returns the device; raises ``DeviceError`` saying what to do when it cannot be added."""
    from sensors.device import DeviceKind
    from vimcan_core.errors import DeviceError
    from vimcan_core.skeleton import ImuSite

    device = device_from_spec(spec)
    if any(d.device_id == device.device_id for d in pipeline.devices()):
        raise DeviceError(f"{device.device_id} is connected already (spec {spec!r}); remove it first to add it again")
    if device.kind == DeviceKind.CAMERA:
        if pipeline.camera is not None:
            raise DeviceError(f"the studio has a camera already ({pipeline.camera.device_id}); remove it, then add {spec!r}")
        if pipeline.running:
            device.start()
        pipeline.camera = device
        log.info("camera %s added (%s)", device.device_id, spec)
        return device
    if site is None:
        free = [s for s in ImuSite if s not in pipeline.imus]
        if not free:
            raise DeviceError(f"all six sites have a sensor; remove one before adding {spec!r}")
        site = free[0]
    site = ImuSite(site)
    if site in pipeline.imus:
        raise DeviceError(f"the {site.name.lower().replace('_', ' ')} site has {pipeline.imus[site].device_id} already; "
                          "remove it or pick another site")
    if pipeline.running:
        device.start()
    pipeline.imus = {**pipeline.imus, site: device}
    log.info("IMU %s added at the %s site (%s)", device.device_id, site.name.lower(), spec)
    return device


def remove_device(pipeline, device) -> None:
    """Stop ``device`` and take it out of ``pipeline``; the other devices keep streaming (the
    pipeline thread reads its IMU mapping and its camera afresh on every pass)."""
    if device is pipeline.camera:
        pipeline.camera = None
    else:
        pipeline.imus = {s: d for s, d in pipeline.imus.items() if d is not device}
    device.stop()
    log.info("%s removed", device.device_id)


def assign_sites(pipeline, assignment) -> bool:
    """Strap the pipeline's IMUs to the sites of ``assignment`` (``ImuSite`` -> device, e.g. the
    calibration wizard's); True when the mapping changed. Devices not in the pipeline are ignored."""
    from vimcan_core.skeleton import ImuSite

    ours = {id(d) for d in pipeline.imus.values()}
    new = {ImuSite(s): d for s, d in assignment.items() if id(d) in ours}
    if not new or new == pipeline.imus:
        return False
    placed = {id(d) for d in new.values()}
    for site, d in sorted(pipeline.imus.items()):  # sensors the assignment leaves out keep their site if free
        if id(d) not in placed:
            if site in new:
                log.warning("%s has no site now: the %s site went to %s", d.device_id, site.name.lower(), new[site].device_id)
                continue
            new[site] = d
    pipeline.imus = new
    log.info("IMU sites: %s", ", ".join(f"{s.name.lower()} = {d.device_id}" for s, d in sorted(new.items())))
    return True


def imu_sites(pipeline) -> dict[str, str]:
    """device id -> site name of the pipeline's IMUs."""
    return {d.device_id: s.name.lower() for s, d in getattr(pipeline, "imus", {}).items()}


def device_settings(pipeline, settings: StudioSettings) -> StudioSettings:
    """``settings`` with the pipeline's devices (their specs, at their sites) and camera, to open the
    same devices at the next start. Devices made elsewhere keep the settings' entries."""
    from dataclasses import replace

    from vimcan_core.skeleton import ImuSite

    specs, sites = [], []
    for site in sorted(pipeline.imus):
        spec = spec_of(pipeline.imus[site])
        if spec is None:
            return settings  # a device this session did not make (the demo's): nothing to remember
        specs.append(spec)
        sites.append(ImuSite(site).name.lower())
    camera = "" if pipeline.camera is None else spec_of(pipeline.camera)
    if camera is None:
        return settings
    return replace(settings, devices=tuple(specs), sites=tuple(sites), camera=camera)


def camera_model_of(pipeline):
    """The PinholeCamera of the pipeline's camera: the demo's virtual camera, or the camera device's own model."""
    demo = getattr(pipeline, "demo", None)
    model = getattr(demo, "camera_model", None) if demo is not None else None
    if model is None:
        model = getattr(getattr(pipeline, "camera", None), "camera_model", None)
    return model


def model_of(pipeline, settings: StudioSettings) -> str:
    """Which network runs, for the status panel: weights file and size, or why none runs."""
    source = getattr(pipeline, "pose_source", None)
    model = getattr(getattr(source, "estimator", None), "model", None)
    if model is None:
        return "none (simulation ground truth)"
    n = sum(p.numel() for p in model.parameters())
    mode = "streaming" if getattr(getattr(model, "config", None), "streaming", False) else "bidirectional"
    return f"{weights_path(settings).name} ({mode}, {n / 1e3:.0f}k parameters)"


def body_size_text(source) -> str:
    """How big the live skeleton is drawn, for the status panel: the performer's height and the
    scale applied to the network's skeleton, or that the network's own guess is used."""
    if not hasattr(source, "set_performer_height"):
        return "the performer's own (ground truth)"
    height = getattr(source, "performer_height_m", None)
    if height is None:
        return "the network's guess (no performer height in the profile)"
    scale = getattr(source, "performer_scale", None)
    return f"performer {height:.2f} m" + ("" if scale is None else f" (network x {scale:.2f})")


def backend_of(pipeline) -> str:
    """Where the pose source runs, for the status panel ("cpu", "cuda:0 (mamba_ssm)", or why none)."""
    source = getattr(pipeline, "pose_source", None)
    backend = getattr(source, "backend", None)
    if backend:
        return str(backend)
    name = str(getattr(source, "name", ""))
    return "none: no network runs (simulation)" if "ground truth" in name.lower() else (name or "–")


def discover_devices(ble_timeout_s: float = 4.0) -> list[tuple[str, str | None]]:
    """Serial ports (probed) and BLE IMUs in range: ``(what it is, spec to use or None)`` each (blocks seconds)."""
    from sensors.discovery import list_serial_ports, probe_ports, scan_ble

    found: list[tuple[str, str | None]] = []
    for info in probe_ports(list_serial_ports()):
        found.append((f"{info.port}: {info.recognised_as}", info.suggested_spec))
    try:
        for dev in scan_ble(ble_timeout_s):
            name = getattr(dev, "name", None) or "BLE device"
            found.append((f"{name} {getattr(dev, 'address', '')}".strip(), getattr(dev, "spec", None)))
    except VimcanError as exc:
        found.append((f"Bluetooth: {exc}", None))
    return found


# ----------------------------------------------------------------------------- recording
class StudioRecorder:
    """The record button's recorder: one ``sensors.recording.TakeRecorder`` per take, fed by its own
    bounded subscription of the pipeline and by the devices' raw buffers.

    ``start(name)`` makes a fresh take folder under ``takes_dir``; ``stop()`` returns it once
    the writer has closed the files (take.bvh included)."""

    def __init__(self, pipeline, takes_dir: Path) -> None:
        self._pipeline = pipeline
        self.takes_dir = Path(takes_dir)
        self._recorder = None
        self._queue = None
        self.folder: Path | None = None
        self.profile_name: str | None = None  # the calibration profile in use, for take.json

    @property
    def recording(self) -> bool:
        from sensors.recording import RecorderState

        return self._recorder is not None and self._recorder.state == RecorderState.RECORDING

    @property
    def error(self) -> str | None:
        """Why the current take stopped by itself (disk full, folder gone), or None."""
        err = self._recorder.error if self._recorder is not None else None
        return None if err is None else str(err)

    def stats(self):
        return None if self._recorder is None else self._recorder.stats()

    def start(self, take_name: str) -> Path:
        from sensors.recording import TakeRecorder, imu_sites_of
        from vimcan_core.take import TakeMeta, new_take_folder

        if self.recording:
            raise TakeError(f"{self.folder}: already recording; stop it first")
        folder = new_take_folder(self.takes_dir, take_name)
        devices = list(self._pipeline.devices())
        self._queue = self._pipeline.subscribe(RECORDER_QUEUE_SIZE)
        calibration = current_calibration(self._pipeline)
        meta = TakeMeta(name=folder.name, camera=self._camera_dict(), model=self._source_name(),
                        backend=self._backend(), calibration=self._calibration_dict(calibration),
                        calibration_profile=self.profile_name if calibration is not None else None,
                        performer_height_m=performer_height_m(self._pipeline))
        sites = {**imu_sites_of(devices), **imu_sites(self._pipeline)}  # the pipeline's own mapping first
        self._recorder = TakeRecorder(folder, self._queue, devices, meta=meta, sites=sites,
                                      on_error=lambda exc: log.error("recording stopped: %s", exc))
        try:
            self._recorder.start()
        except TakeError:
            self._unsubscribe()
            raise
        self.folder = folder
        return folder

    def stop(self) -> Path:
        if self._recorder is None or self.folder is None:
            raise TakeError("not recording")
        meta = self._recorder.stop()
        self._unsubscribe()
        log.info("take %s: %d frames, %.1f s, %s", self.folder.name, meta.frames, meta.duration_s, meta.status.value)
        self._recorder = None
        return self.folder

    def _unsubscribe(self) -> None:
        unsubscribe = getattr(self._pipeline, "unsubscribe", None)
        if unsubscribe is not None and self._queue is not None:
            unsubscribe(self._queue)
        self._queue = None

    def _camera_dict(self) -> dict | None:
        cam = camera_model_of(self._pipeline)
        if cam is None:
            return None
        from dataclasses import asdict

        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cam).items()}

    @staticmethod
    def _calibration_dict(calibration) -> dict | None:
        if calibration is None:
            return None
        from sensors.export import calibration_to_dict

        try:
            return calibration_to_dict(calibration)
        except (AttributeError, TypeError, ValueError) as exc:  # a partial calibration must not stop the take
            log.warning("the take will not hold the calibration: %s", exc)
            return None

    def _source_name(self) -> str | None:
        src = getattr(self._pipeline, "pose_source", None)
        return getattr(src, "name", None) if src is not None else None

    def _backend(self) -> str | None:
        return backend_of(self._pipeline)


def make_recorder(pipeline, takes_dir: Path) -> StudioRecorder:
    return StudioRecorder(pipeline, takes_dir)


# ----------------------------------------------------------------------------- calibration
def _calibrated_stage(pipeline):
    """The object that holds the live calibration: the pose source when it has one, else the pipeline."""
    for owner in (getattr(pipeline, "pose_source", None), pipeline):
        if owner is not None and hasattr(owner, "set_calibration"):
            return owner
    return None


def set_calibration(pipeline, calibration, camera=None) -> bool:
    """Give a calibration to the pose stage; False when the stage uses none (ground truth)."""
    stage = _calibrated_stage(pipeline)
    if stage is None:
        return False
    if camera is not None and stage is getattr(pipeline, "pose_source", None):
        stage.set_calibration(calibration, camera)
    else:
        stage.set_calibration(calibration)
    return True


def set_performer_height(pipeline_or_source, height_m: float | None) -> bool:
    """Scale the live skeleton to ``height_m`` (None: the network's size) when the pose stage is
    the model; False when it is not (the ground truth has the performer's own size)."""
    source = getattr(pipeline_or_source, "pose_source", pipeline_or_source)
    setter = getattr(source, "set_performer_height", None)
    if not callable(setter):
        return False
    setter(height_m)
    log.info("performer height: %s", "unknown (the network's size)" if height_m is None else f"{height_m:.2f} m")
    return True


def performer_height_m(pipeline) -> float | None:
    """The height the live poses are scaled to, or None."""
    return getattr(getattr(pipeline, "pose_source", None), "performer_height_m", None)


def current_calibration(pipeline):
    stage = _calibrated_stage(pipeline)
    if stage is None:
        return None
    value = getattr(stage, "calibration", None)
    return value() if callable(value) else value


def apply_heading_reset(pipeline, last_synced) -> tuple[bool, str]:
    """Heading reset with the latest IMU orientations; returns (done, message for the user)."""
    from vimcan_core.calibration import heading_reset

    if last_synced is None:
        return False, "no IMU data yet"
    if not np.all(np.asarray(last_synced.imu_present)):
        return False, "an IMU is missing: connect all six, stand straight with arms down, then retry"
    stage = _calibrated_stage(pipeline)
    if stage is None:
        return False, "the pose source uses no IMU calibration (simulation ground truth): nothing to reset"
    calibration = current_calibration(pipeline)
    if calibration is None:
        return False, "no calibration yet: run the calibration wizard first (Ctrl+K)"
    stage.set_calibration(heading_reset(calibration, np.asarray(last_synced.imu_quat_wxyz, dtype=np.float64)))
    return True, "IMU headings aligned to the performer (standing straight, arms down)"


def list_profiles() -> list[str]:
    """Names (file stems) of the saved calibration profiles, newest first."""
    from vimcan_core.calibration_profile import list_profiles as _list

    try:
        return [p.stem for p in _list()]
    except OSError as exc:
        log.warning("cannot list calibration profiles: %s", exc)
        return []


def load_profile_into(pipeline, name: str) -> str:
    """Load the profile ``name`` and give its calibration to the pose stage; returns a status line."""
    from vimcan_core.calibration_profile import list_profiles as _list, load_profile, remember_last_profile

    paths = [p for p in _list() if p.stem == name]
    if not paths:
        log.error("calibration profile %r not found", name)
        return f"{name}: not found"
    try:
        profile = load_profile(paths[0])
    except VimcanError as exc:
        log.error("%s", exc)
        return f"{name}: not loaded (see the log)"
    remember_last_profile(paths[0])
    set_performer_height(pipeline, profile.performer_height_m)
    by_id = {d.device_id: d for d in getattr(pipeline, "imus", {}).values()}
    assignment = {i: by_id[device_id] for i, device_id in enumerate(profile.site_devices) if device_id in by_id}
    if assignment and getattr(pipeline, "demo", None) is None:  # the demo's sensors are strapped where they are
        assign_sites(pipeline, assignment)
    stage = _calibrated_stage(pipeline)
    if stage is None:
        return f"{profile.name} (not used by the simulation ground truth)"
    if profile.camera is not None and stage is getattr(pipeline, "pose_source", None):
        stage.set_calibration(profile.calibration, profile.camera)
    else:
        stage.set_calibration(profile.calibration)
    return profile.name
