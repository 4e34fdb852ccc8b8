"""Recording a take: a writer thread that never loses what it has written.

``TakeRecorder`` owns one thread. It takes ``(SyncedFrame, PoseFrame)`` pairs from a bounded
queue (``CapturePipeline.subscribe``), drains every device's ``SampleBuffer`` with
``read_since`` and appends rows to the take's CSV files (format: ``vimcan_core.take``):

* poses.csv and inputs.csv: one row per pose frame; raw.csv: one row per sensor sample;
* a sensor that leaves the streaming state gets a ``state`` row in raw.csv, samples a slow
  reader lost get a ``lost`` row, and its IMU columns in poses.csv are NaN with
  ``<site>_present = 0``: nothing is filled in;
* files are flushed and fsync'ed every ``flush_interval_s`` (at most a second), and take.json is
  rewritten atomically every ``meta_interval_s``; a killed recorder leaves a take that
  ``vimcan_core.take.recover_take`` restores up to the last flush;
* a write error (disk full, the folder deleted or its drive unplugged) stops the recording:
  the thread closes what it can, marks the take ``failed`` with the reason and reports a
  ``TakeError`` (``error``, and ``on_error`` if given); the lines already written stay readable.

On ``stop()`` the thread writes the frames still queued, closes the files, marks the take
``complete`` and writes take.bvh from poses.csv.
"""

from __future__ import annotations

import errno
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, replace
from enum import Enum
from pathlib import Path
from typing import IO, Callable, Mapping, Sequence

import numpy as np

from sensors.device import Device, DeviceKind, DeviceState
from sensors.samples import ImuSample, KeypointFrame, PoseFrame, SyncedFrame
from vimcan_core.errors import TakeError
from vimcan_core.skeleton import NUM_JOINTS
from vimcan_core.take import (
    INPUT_COLUMNS,
    POSE_COLUMNS,
    RAW_COLUMNS,
    DeviceRecord,
    RawKind,
    TakeMeta,
    TakePaths,
    TakeStatus,
    fmt_number,
    header_line,
    input_row,
    pose_row,
    write_meta,
    write_take_bvh,
)

log = logging.getLogger(__name__)

_NAN = "nan"
# raw.csv cells after (time, device time, device, kind, seq): 4 quat, 3 acc, 3 gyro, 2 size, 51 keypoints, event, lost
_RAW_TAIL_KEYPOINTS = ",".join([_NAN] * (3 * NUM_JOINTS))
_RAW_IMU_EMPTY = ",".join([_NAN] * 10)


#: leaving STREAMING for one of these is a drop-out (STOPPED at the end of a take is not)
_GAP_STATES = (DeviceState.STALLED, DeviceState.DISCONNECTED, DeviceState.RECONNECTING)


class RecorderState(Enum):
    IDLE = "idle"
    RECORDING = "recording"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class RecorderConfig:
    """How the writer thread works."""

    flush_interval_s: float = 0.5  # flush + fsync at least this often (the issue asks for <= 1 s)
    meta_interval_s: float = 2.0  # rewrite take.json (duration, frames) this often
    raw_interval_s: float = 0.1  # drain the device buffers this often
    queue_timeout_s: float = 0.05  # longest wait for a frame before looking at the rest
    write_bvh: bool = True  # write take.bvh when the take stops normally
    buffer_bytes: int = 1 << 16  # write buffer per file


@dataclass(frozen=True)
class RecorderStats:
    """What the record panel and ``vimcan record`` show."""

    state: RecorderState
    frames: int
    frames_missed: int
    raw_rows: int
    duration_s: float
    bytes_written: int
    error: str | None


class _DeviceTrack:
    """The writer thread's view of one device."""

    def __init__(self, device: Device, site: str | None) -> None:
        self.device = device
        self.site = site
        self.cursor = device.buffer.total_pushed  # only samples from the start of the take
        self.state = device.state
        self.rows = 0
        self.lost = 0
        self.gaps = 0

    def record(self) -> DeviceRecord:
        stats = self.device.stats()
        return DeviceRecord(
            device_id=self.device.device_id, kind=self.device.kind.value, site=self.site, samples=self.rows,
            lost=self.lost, dropped=stats.dropped, reconnects=stats.reconnects, gaps=self.gaps,
        )


class TakeRecorder:
    """Writes one take into ``folder`` from a frame queue and the devices' buffers.

    Args:
        folder: the take folder (created if missing; ``vimcan_core.take.new_take_folder``
            makes a fresh one).
        frames: bounded queue of ``(SyncedFrame, PoseFrame)`` (``pipeline.subscribe(...)``).
        devices: the devices whose raw samples go to raw.csv.
        meta: template metadata (notes, model, backend, camera, calibration profile, frame
            rate); name, status, times and devices are filled in by the recorder.
        sites: device id -> IMU site name, stored with the device in take.json.
        on_error: called once from the writer thread with the ``TakeError`` that stopped it.
    """

    def __init__(
        self,
        folder: str | Path,
        frames: "queue.Queue[tuple[SyncedFrame, PoseFrame]]",
        devices: Sequence[Device] = (),
        meta: TakeMeta | None = None,
        config: RecorderConfig = RecorderConfig(),
        sites: Mapping[str, str] | None = None,
        on_error: Callable[[TakeError], None] | None = None,
    ) -> None:
        self.paths = TakePaths(Path(folder))
        self.config = config
        self._frames = frames
        self._devices = list(devices)
        self._sites = dict(sites or {})
        self._meta = meta or TakeMeta(name=self.paths.folder.name)
        self._on_error = on_error
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards the counters read by stats()
        self._thread: threading.Thread | None = None
        self._state = RecorderState.IDLE
        self._error: TakeError | None = None
        self._frames_written = 0
        self._frames_missed = 0
        self._raw_rows = 0
        self._bytes = 0
        self._origin = 0.0
        self._first_time: float | None = None
        self._last_time: float | None = None
        self._last_index: int | None = None
        self._files: dict[str, IO[str]] = {}
        self._tracks: list[_DeviceTrack] = []
        self._ids: dict[str, str] = {}  # device id -> its CSV-safe form
        self._final_meta: TakeMeta | None = None

    # ------------------------------------------------------------------------ public API
    def start(self) -> None:
        """Create the files and start the writer thread. Raises TakeError if the folder cannot be written."""
        if self._thread is not None:
            raise TakeError(f"{self.paths.folder}: this recorder was already started; make a new TakeRecorder per take")
        self._origin = time.monotonic()
        self._tracks = [_DeviceTrack(d, self._sites.get(d.device_id)) for d in self._devices]
        self._meta = replace(
            self._meta, name=self._meta.name or self.paths.folder.name, status=TakeStatus.RECORDING,
            host_time_origin_s=self._origin, devices=tuple(t.record() for t in self._tracks),
        )
        try:
            self.paths.folder.mkdir(parents=True, exist_ok=True)
            for key, path, columns in (("poses", self.paths.poses, POSE_COLUMNS), ("inputs", self.paths.inputs, INPUT_COLUMNS), ("raw", self.paths.raw, RAW_COLUMNS)):
                f = open(path, "x", encoding="utf-8", newline="\n", buffering=self.config.buffer_bytes)
                self._files[key] = f
                f.write(header_line(columns))
            self._flush()
            write_meta(self.paths.folder, self._meta)
        except FileExistsError as exc:
            self._close_files()
            raise TakeError(f"{exc.filename}: a take is already recorded in {self.paths.folder}; choose a new folder") from None
        except OSError as exc:
            self._close_files()
            raise self._io_error(exc, "cannot start the take") from exc
        self._state = RecorderState.RECORDING
        self._thread = threading.Thread(target=self._run, name=f"take-writer-{self.paths.folder.name}", daemon=True)
        self._thread.start()
        log.info("recording to %s", self.paths.folder)

    def stop(self, timeout_s: float = 30.0) -> TakeMeta:
        """Stop, write what is queued, close the take; returns its final metadata.

        A take that failed earlier keeps status ``failed`` (see ``error``)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("%s: writer did not stop within %.0f s", self.paths.folder, timeout_s)
        return self._final_meta or self._meta

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for the writer thread to end (after ``stop`` or an error); True if it ended."""
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def state(self) -> RecorderState:
        return self._state

    @property
    def error(self) -> TakeError | None:
        """The error that stopped the recording, or None."""
        return self._error

    @property
    def origin_s(self) -> float:
        """Host time (``time.monotonic``) that the take's ``time_s`` columns count from."""
        return self._origin

    def stats(self) -> RecorderStats:
        with self._lock:
            dur = 0.0 if self._first_time is None or self._last_time is None else self._last_time - self._first_time
            return RecorderStats(
                state=self._state, frames=self._frames_written, frames_missed=self._frames_missed, raw_rows=self._raw_rows,
                duration_s=dur, bytes_written=self._bytes, error=None if self._error is None else str(self._error),
            )

    # ------------------------------------------------------------------------ the thread
    def _run(self) -> None:
        cfg = self.config
        last_flush = last_meta = last_raw = time.monotonic()
        try:
            while not self._stop.is_set():
                try:
                    item = self._frames.get(timeout=cfg.queue_timeout_s)
                except queue.Empty:
                    item = None
                if item is not None:
                    self._write_frame(*item)
                    self._drain_queue(limit=64)
                now = time.monotonic()
                if now - last_raw >= cfg.raw_interval_s:
                    self._drain_raw()
                    last_raw = now
                if now - last_flush >= cfg.flush_interval_s:
                    self._flush()
                    last_flush = now
                if now - last_meta >= cfg.meta_interval_s:
                    write_meta(self.paths.folder, self._current_meta(TakeStatus.RECORDING))
                    last_meta = now
            # stopping: what is still queued and buffered belongs to the take
            self._drain_queue(limit=None)
            self._drain_raw()
            self._flush()
            self._close_files(raise_errors=True)
            meta = self._current_meta(TakeStatus.COMPLETE)
            write_meta(self.paths.folder, meta)
            self._final_meta = meta
        except (OSError, TakeError) as exc:
            self._fail(exc)
            return
        except Exception as exc:  # a bug must not lose the take silently
            log.exception("%s: writer thread failed", self.paths.folder)
            self._fail(TakeError(f"{self.paths.folder}: recording stopped by an internal error: {type(exc).__name__}: {exc}"))
            return
        self._state = RecorderState.STOPPED
        log.info("%s: %d frames, %.1f s, %d raw rows", self.paths.folder, meta.frames, meta.duration_s, self._raw_rows)
        if cfg.write_bvh and meta.frames:
            try:
                write_take_bvh(self.paths.folder)
            except Exception as exc:  # the CSVs are the take; a BVH can be exported again
                log.error("%s: could not write take.bvh (%s); run `vimcan export %s --bvh`", self.paths.folder, exc, self.paths.folder)

    def _drain_queue(self, limit: int | None) -> None:
        n = 0
        while limit is None or n < limit:
            try:
                item = self._frames.get_nowait()
            except queue.Empty:
                return
            self._write_frame(*item)
            n += 1

    def _write_frame(self, synced: SyncedFrame, pose: PoseFrame) -> None:
        t = pose.time_s - self._origin
        present = np.asarray(pose.imu_present, dtype=bool)
        poses_line = pose_row(
            pose.frame_index, t, pose.joints_world_m, pose.root_world_m, pose.camera_present, present,
            pose.confidence, pose.bone_quats_world,
        )
        inputs_line = input_row(
            synced.frame_index, synced.time_s - self._origin, synced.image_size_px, synced.keypoints_px,
            synced.keypoint_confidence, np.where(synced.imu_present[:, None], synced.imu_quat_wxyz, np.nan),
            np.where(synced.imu_present[:, None], synced.imu_acc_free_mps2, np.nan),
        )
        self._write("poses", poses_line)
        self._write("inputs", inputs_line)
        with self._lock:
            if self._last_index is not None and pose.frame_index > self._last_index + 1:
                self._frames_missed += pose.frame_index - self._last_index - 1
            self._last_index = pose.frame_index
            self._frames_written += 1
            if self._first_time is None:
                self._first_time = pose.time_s
            self._last_time = pose.time_s

    def _drain_raw(self) -> None:
        lines: list[str] = []
        for track in self._tracks:
            dev = track.device
            samples, track.cursor, lost = dev.buffer.read_since(track.cursor)
            if lost:
                track.lost += lost
                lines.append(self._event_line(dev.device_id, RawKind.LOST, "", lost))
            for s in samples:
                lines.append(self._sample_line(s))
            track.rows += len(samples)
            state = dev.state
            if state != track.state:
                if track.state == DeviceState.STREAMING and state in _GAP_STATES:
                    track.gaps += 1
                track.state = state
                lines.append(self._event_line(dev.device_id, RawKind.STATE, state.value, None))
                if state in _GAP_STATES:
                    log.warning("%s: %s during the take (marked in raw.csv)", dev.device_id, state.value)
        if lines:
            self._write("raw", "".join(lines))
            with self._lock:
                self._raw_rows += len(lines)

    def _csv_id(self, device_id: str) -> str:
        """A device id safe inside a CSV cell (no commas, quotes or line breaks)."""
        safe = self._ids.get(device_id)
        if safe is None:
            safe = self._ids[device_id] = "".join("_" if c in ',"\r\n' else c for c in device_id)
        return safe

    def _sample_line(self, s: ImuSample | KeypointFrame) -> str:
        t = fmt_number(s.host_time_s - self._origin)
        dt = _NAN if s.device_time_s is None else repr(float(s.device_time_s))
        if isinstance(s, ImuSample):
            seq = _NAN if s.seq is None else str(int(s.seq))
            acc = (_NAN,) * 3 if s.acc_free_mps2 is None else tuple(fmt_number(x) for x in s.acc_free_mps2)
            gyro = (_NAN,) * 3 if s.gyro_dps is None else tuple(fmt_number(x) for x in s.gyro_dps)
            cells = (t, dt, self._csv_id(s.device_id), RawKind.IMU.value, seq, *(fmt_number(x) for x in s.quat_wxyz), *acc, *gyro, _NAN, _NAN)
            return ",".join(cells) + "," + _RAW_TAIL_KEYPOINTS + ",,nan\n"
        kp = np.concatenate((s.keypoints_px, s.confidence[:, None]), axis=1).reshape(-1)  # 51
        cells = (t, dt, self._csv_id(s.device_id), RawKind.KEYPOINTS.value, _NAN, _RAW_IMU_EMPTY, str(int(s.width_px)), str(int(s.height_px)))
        return ",".join(cells) + "," + ",".join(fmt_number(x) for x in kp.tolist()) + ",,nan\n"

    def _event_line(self, device_id: str, kind: RawKind, event: str, lost: int | None) -> str:
        t = fmt_number(time.monotonic() - self._origin)
        return ",".join((t, _NAN, self._csv_id(device_id), kind.value, _NAN, _RAW_IMU_EMPTY, _NAN, _NAN, _RAW_TAIL_KEYPOINTS, event, fmt_number(lost))) + "\n"

    # --------------------------------------------------------------------------- files
    def _write(self, key: str, text: str) -> None:
        f = self._files[key]
        try:
            f.write(text)
        except OSError as exc:
            raise self._io_error(exc, "cannot write", f.name) from exc
        with self._lock:
            self._bytes += len(text)

    def _flush(self) -> None:
        for key, f in self._files.items():
            try:
                f.flush()
                os.fsync(f.fileno())
            except OSError as exc:
                raise self._io_error(exc, "cannot save", f.name) from exc
            if os.fstat(f.fileno()).st_nlink == 0 or not self.paths.folder.is_dir():
                raise TakeError(
                    f"{self.paths.folder}: the take folder vanished while recording (deleted, renamed or its drive "
                    f"unplugged) after {self._frames_written} frames; recording stopped. Record to a folder on a drive that stays connected."
                )

    def _close_files(self, raise_errors: bool = False) -> None:
        files, self._files = self._files, {}
        first: OSError | None = None
        for f in files.values():
            try:
                f.close()
            except OSError as exc:
                first = first or exc
        if first is not None and raise_errors:
            raise self._io_error(first, "cannot close the take files")

    def _io_error(self, exc: OSError, what: str, path: str | Path | None = None) -> TakeError:
        where = exc.filename or path or self.paths.folder
        n, secs = self._frames_written, self.stats().duration_s
        if exc.errno == errno.ENOSPC:
            return TakeError(
                f"{where}: disk full, {what} after {n} frames ({secs:.1f} s); recording stopped. Free some space or "
                "record to another drive; everything up to the last save (within a second) is readable."
            )
        if exc.errno in (errno.ENOENT, errno.ESTALE, errno.ENODEV, errno.EIO):
            return TakeError(
                f"{where}: the take folder is gone or its drive failed ({exc.strerror}), {what} after {n} frames; recording stopped."
            )
        return TakeError(f"{where}: {what} ({exc.strerror or exc}) after {n} frames; recording stopped.")

    def _current_meta(self, status: TakeStatus) -> TakeMeta:
        s = self.stats()
        return replace(
            self._meta, status=status, frames=s.frames, frames_missed=s.frames_missed, duration_s=round(s.duration_s, 6),
            devices=tuple(t.record() for t in self._tracks),
            error=None if self._error is None else str(self._error),
        )

    def _fail(self, exc: OSError | TakeError) -> None:
        err = exc if isinstance(exc, TakeError) else self._io_error(exc, "write failed")
        self._error = err
        self._state = RecorderState.FAILED
        self._close_files()
        log.error("%s", err)
        try:  # take.json is small; on a full disk this may fail too, recovery rebuilds it
            write_meta(self.paths.folder, self._current_meta(TakeStatus.FAILED))
        except OSError:
            log.warning("%s: could not mark the take as failed in take.json", self.paths.folder)
        self._final_meta = self._current_meta(TakeStatus.FAILED)
        if self._on_error is not None:
            try:
                self._on_error(err)
            except Exception:
                log.exception("%s: on_error callback failed", self.paths.folder)


def imu_sites_of(devices: Sequence[Device]) -> dict[str, str]:
    """device id -> site name for devices that carry a ``site`` attribute (simulated and configured IMUs)."""
    out = {}
    for d in devices:
        site = getattr(d, "site", None)
        if d.kind == DeviceKind.IMU and site is not None:
            out[d.device_id] = getattr(site, "name", str(site)).lower()
    return out


class RawOnlyPoseSource:
    """A pose stage that solves nothing, for recording sensors without a model or calibration.

    Every ``PoseFrame`` has NaN joints and confidence 0 (poses.csv says ``nan``, never a guess);
    raw.csv and inputs.csv hold everything measured, and ``vimcan export --resolve`` solves the
    take later (with a calibration in take.json)."""

    name = "none (raw recording; solve later with vimcan export --resolve)"

    def reset(self) -> None:
        pass

    def estimate(self, frame: SyncedFrame) -> PoseFrame:
        return PoseFrame(
            frame_index=frame.frame_index, time_s=frame.time_s, joints_world_m=np.full((NUM_JOINTS, 3), np.nan),
            root_world_m=None, source=self.name, camera_present=frame.camera_present,
            imu_present=np.asarray(frame.imu_present, dtype=bool).copy(), confidence=0.0,
            sample_host_time_s=frame.sample_host_time_s, bone_quats_world=None,
        )
