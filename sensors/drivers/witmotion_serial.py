"""WitMotion serial IMUs (WT901, HWT905, WT901C, BWT901CL over its serial/SPP link).

The sensor sends a burst of 11-byte frames each period (``sensors.protocols.witmotion``):
optionally time (0x50), then acceleration, angular rate, angles, magnetometer and, when
enabled, the quaternion. ``WitMotionAssembler`` turns bursts into ``ImuSample``s: a sample
is emitted on the orientation frame, carrying the latest acceleration and angular rate.

The assembler expects quaternion frames (0x59) and waits for them. When three angle frames
(0x53) arrive with no quaternion in between (one lost quaternion frame is not enough), the
sensor does not send quaternions, and the angles are used instead (converted with the Z-Y-X
convention); a later quaternion switches back. So each burst gives one sample (the first
two bursts give none when the sensor sends angles only).

WitMotion frames carry no per-sample timestamp: ``device_time_s`` is the 0x50 chip time
when the sensor sends it and None otherwise. They carry no counter either, so dropped
frames cannot be counted (corrupt ones are).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from sensors.device import DeviceConfig
from sensors.drivers.serial_port import SerialDevice, SerialSettings
from sensors.protocols import scalar_math as sm
from sensors.protocols import witmotion as wm
from sensors.samples import ImuSample, Sample

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WitMotionSetup:
    """Configuration written to the sensor on connect (None: leave the sensor's setting)."""

    rate_hz: float | None = None  # output rate, one of protocols.witmotion.RATE_CODES
    enable_quaternion: bool = False  # add 0x59 frames to acc + gyro + angle
    enable_time: bool = False  # add 0x50 chip-time frames (device timestamps)
    save: bool = False  # write the settings to flash
    baud: int | None = None  # switch the sensor (and then this port) to this baud rate; implies save

    def commands(self) -> list[bytes]:
        content = None
        if self.enable_quaternion or self.enable_time:
            content = wm.Content.ACC | wm.Content.GYRO | wm.Content.ANGLE
            if self.enable_quaternion:
                content |= wm.Content.QUATERNION
            if self.enable_time:
                content |= wm.Content.TIME
        return wm.configure_commands(rate_hz=self.rate_hz, content=content, baud=self.baud,
                                     save=self.save or self.baud is not None)


class WitMotionAssembler:
    """Collects the frames of one burst and emits an ``ImuSample`` per orientation frame."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.invalid = 0  # orientation frames that could not be used (zero quaternion)
        self.reset()

    def reset(self) -> None:
        self._acc_g: tuple[float, float, float] | None = None
        self._gyro_dps: tuple[float, float, float] | None = None
        self._time_s: float | None = None
        self.uses_quaternion = True  # until angle frames prove otherwise
        self._angles_without_quat = 0

    def push(self, packet: wm.WitPacket, host_time_s: float) -> ImuSample | None:
        if isinstance(packet, wm.WitQuat):
            if not self.uses_quaternion:
                log.info("%s: quaternion frames arrive; using them instead of the angles", self.device_id)
            self.uses_quaternion = True
            self._angles_without_quat = 0
            w, x, y, z = packet.quat_wxyz
            if not 0.25 < w * w + x * x + y * y + z * z < 2.25:  # norm within (0.5, 1.5)
                self.invalid += 1
                return None
            return self._emit(sm.normalise(packet.quat_wxyz), host_time_s)
        if isinstance(packet, wm.WitAngle):
            if self.uses_quaternion:
                self._angles_without_quat += 1
                if self._angles_without_quat < 3:
                    return None
                log.info("%s: no quaternion frames; orientation from the angles", self.device_id)
                self.uses_quaternion = False
            return self._emit(sm.euler_zyx_deg_to_quat(*packet.roll_pitch_yaw_deg), host_time_s)
        if isinstance(packet, wm.WitAcc):
            self._acc_g = packet.acc_g
        elif isinstance(packet, wm.WitGyro):
            self._gyro_dps = packet.gyro_dps
        elif isinstance(packet, wm.WitTime):
            self._time_s = packet.device_time_s
        return None

    def _emit(self, q: sm.Quat, host_time_s: float) -> ImuSample:
        """``q``: unit, w >= 0. Free acceleration = R(q) (acc_g * g) - g z (the sensor's world is Z up)."""
        acc = None
        if self._acc_g is not None:
            g = wm.GRAVITY_MPS2
            ax, ay, az = sm.rotate(q, self._acc_g)
            acc = (ax * g, ay * g, az * g - g)
        time_s, self._time_s = self._time_s, None
        return ImuSample(
            device_id=self.device_id,
            host_time_s=host_time_s,
            device_time_s=time_s,
            quat_wxyz=q,
            acc_free_mps2=acc,
            gyro_dps=self._gyro_dps,
        )


class WitMotionSerialDevice(SerialDevice):
    """A WitMotion IMU on a serial port (USB adapter CH340/CP2102, or TTL)."""

    def __init__(self, port: str, baud: int = 115200, device_id: str | None = None,
                 setup: WitMotionSetup | None = None, config: DeviceConfig | None = None,
                 settings: SerialSettings | None = None) -> None:
        super().__init__(device_id or f"witmotion:{port}", settings or SerialSettings(port=port, baud=baud), config)
        self.setup = setup or WitMotionSetup()
        self.parser = wm.WitMotionSerialParser()
        self.assembler = WitMotionAssembler(self.device_id)
        self._corrupt_seen = 0

    def _reset_protocol(self) -> None:
        self.parser.reset()
        self.assembler.reset()

    def _on_open(self) -> None:
        cmds = self.setup.commands()
        if cmds:
            log.info("%s: configuring (%d commands)", self.device_id, len(cmds))
            self.write_commands(cmds)
        new_baud = self.setup.baud
        if new_baud is not None and new_baud != self.settings.baud:
            # Models differ: some switch at once, some after a power cycle. Either way the
            # port follows now, and reconnections use the new rate.
            log.warning("%s: sensor set to %d baud and saved; now listening at %d baud (power-cycle the sensor if "
                        "no data comes; use @%d from now on)", self.device_id, new_baud, new_baud, new_baud)
            self.settings = replace(self.settings, baud=new_baud)
            if self._port is not None:
                self._port.baudrate = new_baud
            self.setup = replace(self.setup, baud=None)  # done: do not repeat on reconnection

    def _handle_bytes(self, data: bytes, host_time_s: float) -> list[Sample]:
        packets = self.parser.feed(data)
        if self.parser.corrupt != self._corrupt_seen:
            self._count_corrupt(self.parser.corrupt - self._corrupt_seen)
            self._corrupt_seen = self.parser.corrupt
        out: list[Sample] = []
        for p in packets:
            s = self.assembler.push(p, host_time_s)
            if s is not None:
                out.append(s)
        return out
