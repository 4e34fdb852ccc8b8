"""Do-it-yourself boards speaking the VIMCAN line protocol over serial (``sensors.protocols.line``).

One port may carry several IMUs (``sensor`` field); a device follows one of them: the one
named in ``sensor``, or the first one it hears. Board clocks (uint32 microseconds) are
unwrapped into ``device_time_s``; sequence gaps are counted as dropped, bad lines as
corrupt; ``I`` lines are kept in ``info``. The optional acceleration (sensor frame, gravity
removed) is rotated into the sensor's world frame with the sample's own quaternion.
"""

from __future__ import annotations

import logging

from sensors.device import DeviceConfig
from sensors.drivers.serial_port import SerialDevice, SerialSettings
from sensors.protocols import line as lp
from sensors.protocols import scalar_math as sm
from sensors.protocols.counters import SequenceTracker, Unwrapper
from sensors.samples import ImuSample, Sample

log = logging.getLogger(__name__)


class LineSerialDevice(SerialDevice):
    """An ESP32/Arduino board streaming ``Q`` lines."""

    def __init__(self, port: str, baud: int = 115200, sensor: int | None = None, device_id: str | None = None,
                 config: DeviceConfig | None = None, settings: SerialSettings | None = None) -> None:
        name = device_id or f"line:{port}" + ("" if sensor is None else f"#{sensor}")
        super().__init__(name, settings or SerialSettings(port=port, baud=baud), config)
        self.requested_sensor = sensor
        self.parser = lp.LineParser()
        self.info: dict[str, str] = {}
        self.other_sensor_lines = 0  # lines from IMUs this device does not follow
        self._sensor = sensor
        self._seq = SequenceTracker(lp.SEQ_MODULO)
        self._clock = Unwrapper(lp.TIME_MODULO_US)
        self._corrupt_seen = 0

    @property
    def sensor(self) -> int | None:
        """The IMU id followed (None until the first sample when not chosen)."""
        return self._sensor

    def _reset_protocol(self) -> None:
        self.parser.reset()
        self._seq.reset()
        self._clock.reset()

    def _handle_bytes(self, data: bytes, host_time_s: float) -> list[Sample]:
        messages = self.parser.feed(data)
        if self.parser.corrupt != self._corrupt_seen:
            self._count_corrupt(self.parser.corrupt - self._corrupt_seen)
            self._corrupt_seen = self.parser.corrupt
            log.debug("%s: %s", self.device_id, self.parser.last_error)
        out: list[Sample] = []
        for m in messages:
            if isinstance(m, lp.LineInfo):
                self.info[m.key] = m.value
                continue
            if self._sensor is None:
                self._sensor = m.sensor
                log.info("%s: following sensor %d", self.device_id, m.sensor)
            if m.sensor != self._sensor:
                self.other_sensor_lines += 1
                continue
            if m.seq is not None:
                lost = self._seq.update(m.seq)
                if lost:
                    self._count_dropped(lost)
            q = sm.normalise(m.quat_wxyz)  # the parser checked the norm is about 1
            acc = None if m.acc_sensor_mps2 is None else sm.rotate(q, m.acc_sensor_mps2)
            out.append(ImuSample(
                device_id=self.device_id,
                host_time_s=host_time_s,
                device_time_s=self._clock.update(m.time_us) * 1e-6,
                quat_wxyz=q,
                acc_free_mps2=acc,
                seq=m.seq,
            ))
        return out
