"""Calibration profiles: a named calibration saved as JSON, with the devices and site assignment it was made with.

A profile file (``<config dir>/profiles/<name>.json``)::

    {
      "schema": "vimcan-studio/calibration-profile",
      "schema_version": 1,
      "name": "Studio A, Alice",
      "created_utc": "2026-11-25T10:21:00Z",
      "devices": [{"device_id": "dot-D4:22", "kind": "imu", "driver": "MovellaDot"}, ...],
      "assignment": {"left_forearm": "dot-D4:22", ..., "pelvis": null},
      "camera": {"device_id": "webcam-0", "width_px": 640, "height_px": 480,
                 "fx_px": 554.3, "fy_px": 554.3, "cx_px": 320.0, "cy_px": 240.0} | null,
      "performer_height_m": 1.78 | null,
      "calibration": {
        "quat_world_from_camera": [w, x, y, z],
        "camera_fit_error_px": 0.8,
        "sites": {"left_forearm": {"q_bone_from_sensor": [w, x, y, z], "q_camera_from_imuworld": [w, x, y, z],
                                   "acc_offset_mps2": [x, y, z],
                                   "quality": {"score": 0.97, "motion_deg": 0.4, "tpose_error_deg": 1.2,
                                               "heading_motion_deg": 88.0, "note": ""}},
                  ..., "pelvis": null}
      }
    }

Quaternions follow ``vimcan_core.rotations`` (wxyz, ``q_ab`` takes b into a); the frames are those of
``vimcan_core.calibration``. Loading checks every field and rejects a wrong or corrupt file with a
``ProfileError`` that names the file, the field, what was expected and what to do.
``performer_height_m`` (optional; absent in files of earlier versions) scales the skeleton to the
performer's real size (``vimcan_core.body_scale``).

The config folder is ``$VIMCAN_CONFIG_DIR`` when set (tests point it at a temporary folder), else
``$XDG_CONFIG_HOME/vimcan-studio``, else ``~/.config/vimcan-studio``. Saving a profile also records it as
the last one, which the studio offers at start (``last_profile_path``, ``load_last_profile``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from vimcan_core.calibration import Calibration, SensorQuality
from vimcan_core.camera import PinholeCamera
from vimcan_core.body_scale import check_height_m
from vimcan_core.errors import CalibrationError, VimcanError
from vimcan_core.skeleton import IMU_SITE_NAMES, NUM_IMUS, ImuSite

log = logging.getLogger(__name__)

SCHEMA = "vimcan-studio/calibration-profile"
SCHEMA_VERSION = 1
ENV_CONFIG_DIR = "VIMCAN_CONFIG_DIR"
LAST_PROFILE_FILE = "last_profile.txt"
UNIT_TOLERANCE = 1e-3  # how far from unit norm a stored quaternion may be
_FIX = "re-run the calibration wizard, or pick another profile"


class ProfileError(CalibrationError):
    """A profile file is missing, unreadable, corrupt, or from an unknown schema."""

    def __init__(self, path: Path | str, field_path: str | None, message: str) -> None:
        where = f"{path}" if field_path is None else f"{path}: field '{field_path}'"
        super().__init__(f"{where}: {message}")
        self.path = Path(path)
        self.field_path = field_path


DEVICE_KINDS = ("imu", "camera")  # the values of ``sensors.device.DeviceKind`` (core does not import sensors)


@dataclass(frozen=True)
class ProfileDevice:
    """A device the profile was made with."""

    device_id: str
    kind: str = "imu"  # one of DEVICE_KINDS
    driver: str = ""  # driver class name, for the user's information


@dataclass(frozen=True)
class CalibrationProfile:
    """A named calibration and the set-up it belongs to.

    ``site_devices[i]`` is the device id strapped to ``ImuSite(i)`` (None: no sensor there).
    """

    name: str
    calibration: Calibration
    site_devices: tuple[str | None, ...]
    devices: tuple[ProfileDevice, ...] = ()
    camera: PinholeCamera | None = None
    camera_device_id: str | None = None
    performer_height_m: float | None = None  # the person's height (None: unknown, the network's guess is kept)
    created_utc: datetime = field(default_factory=lambda: datetime.now(timezone.utc).replace(microsecond=0))
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if len(self.site_devices) != NUM_IMUS:
            raise CalibrationError(f"CalibrationProfile.site_devices must have {NUM_IMUS} entries (site order), got {len(self.site_devices)}")
        object.__setattr__(self, "site_devices", tuple(self.site_devices))
        object.__setattr__(self, "devices", tuple(self.devices))
        if self.performer_height_m is not None:
            try:
                height = check_height_m(self.performer_height_m, "CalibrationProfile.performer_height_m")
            except VimcanError as exc:
                raise CalibrationError(str(exc)) from None
            object.__setattr__(self, "performer_height_m", height)

    @property
    def assignment(self) -> dict[ImuSite, str]:
        """Site -> device id, for the sites that have a sensor."""
        return {ImuSite(i): d for i, d in enumerate(self.site_devices) if d is not None}

    def to_json_dict(self) -> dict[str, Any]:
        c = self.calibration
        sites: dict[str, Any] = {}
        for i, name in enumerate(IMU_SITE_NAMES):
            if not c.calibrated[i]:
                sites[name] = None
                continue
            q = c.quality[i]
            sites[name] = {
                "q_bone_from_sensor": _floats(c.q_bone_from_sensor[i]),
                "q_camera_from_imuworld": _floats(c.q_camera_from_imuworld[i]),
                "acc_offset_mps2": _floats(np.nan_to_num(c.acc_offset_mps2[i])),
                "quality": {
                    "score": _json_float(q.score),
                    "motion_deg": _json_float(q.motion_deg),
                    "tpose_error_deg": _json_float(q.tpose_error_deg),
                    "heading_motion_deg": _json_float(q.heading_motion_deg),
                    "note": q.note,
                },
            }
        cam = None
        if self.camera is not None:
            k = self.camera
            cam = {"device_id": self.camera_device_id, "width_px": int(k.width_px), "height_px": int(k.height_px),
                   "fx_px": float(k.fx_px), "fy_px": float(k.fy_px), "cx_px": float(k.cx_px), "cy_px": float(k.cy_px)}
        return {
            "schema": SCHEMA,
            "schema_version": SCHEMA_VERSION,
            "name": self.name,
            "created_utc": self.created_utc.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "devices": [{"device_id": d.device_id, "kind": d.kind, "driver": d.driver} for d in self.devices],
            "assignment": {name: self.site_devices[i] for i, name in enumerate(IMU_SITE_NAMES)},
            "camera": cam,
            "performer_height_m": self.performer_height_m,
            "calibration": {
                "quat_world_from_camera": _floats(c.quat_world_from_camera),
                "camera_fit_error_px": _json_float(c.camera_fit_error_px),
                "sites": sites,
            },
        }


def _floats(a: np.ndarray) -> list[float]:
    return [float(x) for x in np.asarray(a).ravel()]


def _json_float(x: float) -> float | None:
    """NaN is not JSON: store it as null."""
    return None if x is None or not math.isfinite(float(x)) else float(x)


# ------------------------------------------------------------------- folders
def config_dir() -> Path:
    """The user's VIMCAN Studio config folder (not created)."""
    env = os.environ.get(ENV_CONFIG_DIR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".config"
    return base / "vimcan-studio"


def profiles_dir() -> Path:
    """Where profiles are saved: ``<config dir>/profiles``."""
    return config_dir() / "profiles"


def profile_file_name(name: str) -> str:
    """A safe file name for a profile name: ``"Studio A, Alice"`` -> ``"studio-a-alice.json"``."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.strip().lower()).strip("-")
    return f"{slug or 'profile'}.json"


def list_profiles() -> list[Path]:
    """Profile files in ``profiles_dir()``, newest first."""
    folder = profiles_dir()
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)


# ----------------------------------------------------------------- save/load
def save_profile(profile: CalibrationProfile, path: Path | None = None, remember_as_last: bool = True) -> Path:
    """Write the profile as JSON (atomically: a crash leaves the old file) and return its path.

    Default path: ``profiles_dir() / profile_file_name(profile.name)``. With ``remember_as_last``
    the studio offers this profile at its next start."""
    if not profile.name.strip():
        raise CalibrationError("a profile needs a name; type one in the wizard's last page")
    path = Path(path) if path is not None else profiles_dir() / profile_file_name(profile.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(profile.to_json_dict(), indent=2, allow_nan=False)
    fd, tmp = tempfile.mkstemp(prefix=".profile-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if remember_as_last:
        _write_last(path)
    log.info("saved calibration profile %r to %s", profile.name, path)
    return path


def _write_last(path: Path) -> None:
    folder = config_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LAST_PROFILE_FILE).write_text(str(Path(path).resolve()) + "\n", encoding="utf-8")


def last_profile_path() -> Path | None:
    """The profile saved (or chosen) last, if its file still exists; else the newest profile; else None."""
    pointer = config_dir() / LAST_PROFILE_FILE
    if pointer.is_file():
        candidate = Path(pointer.read_text(encoding="utf-8").strip())
        if candidate.is_file():
            return candidate
        log.info("last profile %s is gone; offering the newest one instead", candidate)
    profiles = list_profiles()
    return profiles[0] if profiles else None


def load_last_profile() -> CalibrationProfile | None:
    """The last profile, validated; None when there is none. Raises ``ProfileError`` when it is corrupt."""
    path = last_profile_path()
    return None if path is None else load_profile(path)


def remember_last_profile(path: Path) -> None:
    """Make ``path`` the profile offered at the next start (after the user picked it)."""
    _write_last(path)


def load_profile(path: Path | str) -> CalibrationProfile:
    """Read and validate a profile file.

    Raises:
        ProfileError: the file is missing, not JSON, from another schema or a newer version, or a
            field is missing or wrong (the message names the field, e.g.
            ``calibration.sites.left_forearm.q_bone_from_sensor``).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(path, None, f"no such file; {_FIX}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(path, None, f"cannot be read ({exc}); {_FIX}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError(path, None, f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                                       f"the file is corrupt, {_FIX}") from None
    return _Reader(path).profile(data)


class _Reader:
    """Field-by-field validation with messages that name the file and field."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def fail(self, field_path: str | None, message: str) -> ProfileError:
        return ProfileError(self.path, field_path, f"{message}; {_FIX}")

    def get(self, obj: dict, key: str, parent: str, kinds: tuple[type, ...], nullable: bool = False) -> Any:
        where = f"{parent}.{key}" if parent else key
        if key not in obj:
            raise self.fail(where, "missing")
        value = obj[key]
        if value is None and nullable:
            return None
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            expected = " or ".join(k.__name__ for k in kinds) + (" or null" if nullable else "")
            raise self.fail(where, f"expected {expected}, got {type(value).__name__} {_short(value)}")
        return value

    def number(self, obj: dict, key: str, parent: str, nullable: bool = False) -> float:
        v = self.get(obj, key, parent, (int, float), nullable)
        return float("nan") if v is None else float(v)

    def vector(self, obj: dict, key: str, parent: str, size: int, unit: bool = False) -> np.ndarray:
        where = f"{parent}.{key}"
        v = self.get(obj, key, parent, (list,))
        if len(v) != size or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            raise self.fail(where, f"expected {size} numbers{' (w, x, y, z)' if unit else ''}, got {_short(v)}")
        a = np.array(v, dtype=np.float64)
        if not np.all(np.isfinite(a)):
            raise self.fail(where, f"expected finite numbers, got {_short(v)}")
        if unit and abs(np.linalg.norm(a) - 1.0) > UNIT_TOLERANCE:
            raise self.fail(where, f"expected a unit quaternion, got norm {np.linalg.norm(a):.4f}")
        return a

    def profile(self, data: Any) -> CalibrationProfile:
        if not isinstance(data, dict):
            raise self.fail(None, f"expected a JSON object at the top, got {type(data).__name__}")
        schema = self.get(data, "schema", "", (str,))
        if schema != SCHEMA:
            raise self.fail("schema", f"expected {SCHEMA!r}, got {schema!r} (this is not a calibration profile)")
        version = self.get(data, "schema_version", "", (int,))
        if version > SCHEMA_VERSION:
            raise self.fail("schema_version", f"version {version} was written by a newer VIMCAN Studio; this one reads "
                                              f"up to version {SCHEMA_VERSION} (update VIMCAN Studio)")
        if version < 1:
            raise self.fail("schema_version", f"expected a version from 1 to {SCHEMA_VERSION}, got {version}")
        name = self.get(data, "name", "", (str,))
        if not name.strip():
            raise self.fail("name", "expected a non-empty name")
        created_s = self.get(data, "created_utc", "", (str,))
        try:
            created = datetime.strptime(created_s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        except ValueError:
            raise self.fail("created_utc", f"expected a UTC time like 2026-01-31T12:00:00Z, got {created_s!r}") from None

        devices = []
        for k, d in enumerate(self.get(data, "devices", "", (list,))):
            where = f"devices[{k}]"
            if not isinstance(d, dict):
                raise self.fail(where, f"expected an object, got {_short(d)}")
            kind = self.get(d, "kind", where, (str,))
            if kind not in DEVICE_KINDS:
                raise self.fail(f"{where}.kind", f"expected one of {DEVICE_KINDS}, got {kind!r}")
            devices.append(ProfileDevice(self.get(d, "device_id", where, (str,)), kind, self.get(d, "driver", where, (str,))))
        known = {d.device_id for d in devices}

        assignment = self.get(data, "assignment", "", (dict,))
        unknown_sites = sorted(set(assignment) - set(IMU_SITE_NAMES))
        if unknown_sites:
            raise self.fail("assignment", f"unknown sites {unknown_sites}; the sites are {list(IMU_SITE_NAMES)}")
        site_devices: list[str | None] = []
        for name_i in IMU_SITE_NAMES:
            dev = self.get(assignment, name_i, "assignment", (str,), nullable=True)
            if dev is not None and devices and dev not in known:
                raise self.fail(f"assignment.{name_i}", f"device {dev!r} is not in 'devices'")
            site_devices.append(dev)
        used = [d for d in site_devices if d is not None]
        if len(used) != len(set(used)):
            dup = sorted({d for d in used if used.count(d) > 1})
            raise self.fail("assignment", f"device(s) {dup} assigned to more than one site")

        camera = None
        camera_id = None
        cam = self.get(data, "camera", "", (dict,), nullable=True)
        if cam is not None:
            camera_id = self.get(cam, "device_id", "camera", (str,), nullable=True)
            w = self.get(cam, "width_px", "camera", (int,))
            h = self.get(cam, "height_px", "camera", (int,))
            vals = {k: self.number(cam, k, "camera") for k in ("fx_px", "fy_px", "cx_px", "cy_px")}
            if w <= 0 or h <= 0 or vals["fx_px"] <= 0 or vals["fy_px"] <= 0:
                raise self.fail("camera", f"expected a positive image size and focal lengths, got {w} x {h}, "
                                          f"f = {vals['fx_px']}, {vals['fy_px']}")
            camera = PinholeCamera(width_px=w, height_px=h, **vals)

        height = None
        if data.get("performer_height_m") is not None:  # optional: absent in earlier files
            height = self.number(data, "performer_height_m", "")
            try:
                check_height_m(height)
            except VimcanError as exc:
                raise self.fail("performer_height_m", str(exc)) from None

        calib = self.calibration(self.get(data, "calibration", "", (dict,)), site_devices)
        return CalibrationProfile(name=name, calibration=calib, site_devices=tuple(site_devices), devices=tuple(devices),
                                  camera=camera, camera_device_id=camera_id, performer_height_m=height,
                                  created_utc=created, schema_version=version)

    def calibration(self, c: dict, site_devices: list[str | None]) -> Calibration:
        q_wc = self.vector(c, "quat_world_from_camera", "calibration", 4, unit=True)
        fit_err = self.number(c, "camera_fit_error_px", "calibration", nullable=True)
        sites = self.get(c, "sites", "calibration", (dict,))
        q_bs = np.full((NUM_IMUS, 4), np.nan)
        q_ce = np.full((NUM_IMUS, 4), np.nan)
        acc = np.full((NUM_IMUS, 3), np.nan)
        quality: list[SensorQuality] = []
        for i, name in enumerate(IMU_SITE_NAMES):
            parent = f"calibration.sites.{name}"
            s = self.get(sites, name, "calibration.sites", (dict,), nullable=True)
            if s is None:
                if site_devices[i] is not None:
                    raise self.fail(parent, f"device {site_devices[i]!r} is assigned to {name} but it has no calibration")
                quality.append(SensorQuality(0.0, float("nan"), float("nan"), float("nan"), note="no sensor"))
                continue
            q_bs[i] = self.vector(s, "q_bone_from_sensor", parent, 4, unit=True)
            q_ce[i] = self.vector(s, "q_camera_from_imuworld", parent, 4, unit=True)
            acc[i] = self.vector(s, "acc_offset_mps2", parent, 3)
            qual = self.get(s, "quality", parent, (dict,))
            qp = f"{parent}.quality"
            score = self.number(qual, "score", qp)
            if not 0.0 <= score <= 1.0:
                raise self.fail(f"{qp}.score", f"expected a number from 0 to 1, got {score}")
            quality.append(SensorQuality(
                score=score,
                motion_deg=self.number(qual, "motion_deg", qp, nullable=True),
                tpose_error_deg=self.number(qual, "tpose_error_deg", qp, nullable=True),
                heading_motion_deg=self.number(qual, "heading_motion_deg", qp, nullable=True),
                note=self.get(qual, "note", qp, (str,)),
            ))
        return Calibration(q_bone_from_sensor=q_bs, q_camera_from_imuworld=q_ce, acc_offset_mps2=acc,
                           quat_world_from_camera=q_wc, quality=tuple(quality),
                           camera_fit_error_px=0.0 if math.isnan(fit_err) else fit_err)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
