"""One root error class with a subclass per area.

A message says what was expected, what arrived, where (file and line, device, frame and
joint) and, where there is one, how to fix it.
"""


class VimcanError(Exception):
    """Root of every error raised on purpose by VIMCAN Studio."""


class InputShapeError(VimcanError, ValueError):
    """A tensor or array with the wrong shape, or with NaN / non-unit values."""


class MotionFileError(VimcanError, ValueError):
    """A malformed motion file (BVH, TotalCapture, ...): names the file and line."""


class CalibrationError(VimcanError):
    """Calibration could not be computed or a profile is invalid."""


class DeviceError(VimcanError):
    """A sensor or camera problem: names the device."""


class DeviceLost(DeviceError):
    """The device vanished (unplugged, out of range); the driver will try to reconnect."""


class TakeError(VimcanError):
    """Recording or reading a take failed: names the take folder and file."""


class CheckpointError(VimcanError):
    """A model checkpoint is missing, corrupt or for another configuration."""
