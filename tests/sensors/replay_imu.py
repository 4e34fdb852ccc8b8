"""An IMU ``Device`` without hardware or thread: tests hand its samples to the base class's delivery path."""

from __future__ import annotations

from typing import Sequence

from sensors.device import Device
from sensors.samples import ImuSample


class ReplayImu(Device):
    """Stands in for the hardware: samples are handed to the base class's delivery path."""

    def _connect(self) -> None:
        pass

    def _poll(self) -> Sequence[ImuSample]:
        return []

    def _disconnect(self) -> None:
        pass
