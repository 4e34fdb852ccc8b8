"""The VIMCAN network (visual-inertial Mamba with cross-attention fusion).

    from vimcan_core.model import VimcanConfig, Vimcan, preset
    model = Vimcan(preset("vimcan-t", streaming=False))
    joints_cam_m = model(keypoints, quats, imu_valid)  # B x T x 17 x 3

Conventions of the inputs and outputs: ``vimcan_core.model.config``. Nothing is built at import
time, and the config can be imported without torch (the torch modules load on first use).
"""

from __future__ import annotations

import importlib
from typing import Any

from vimcan_core.model.config import PRESETS, FusionMode, VimcanConfig, preset

__all__ = [
    "PRESETS", "FusionMode", "VimcanConfig", "preset",
    "Vimcan", "VimcanState", "validate_inputs", "ScanBackend", "selective_scan", "TransformerBaseline",
]

_LAZY = {
    "Vimcan": "vimcan_core.model.vimcan",
    "VimcanState": "vimcan_core.model.vimcan",
    "validate_inputs": "vimcan_core.model.vimcan",
    "ScanBackend": "vimcan_core.model.scan",
    "selective_scan": "vimcan_core.model.scan",
    "TransformerBaseline": "vimcan_core.model.transformer_baseline",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vimcan_core.model' has no attribute {name!r}")
