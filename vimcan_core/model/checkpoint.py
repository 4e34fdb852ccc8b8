"""Saving and loading VIMCAN checkpoints.

A checkpoint is one ``torch.save`` file holding plain data only (loaded with
``weights_only=True``, so loading runs no code)::

    {"format": "vimcan-checkpoint", "version": 1,
     "config": VimcanConfig.to_dict(), "metadata": {...JSON-able...},
     "dtype": "float32" | "float16", "state_dict": {name: tensor}}

``half=True`` stores the weights as float16 (half the size, for shipping); they are loaded back
as float32.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from vimcan_core.errors import CheckpointError, VimcanError
from vimcan_core.model.config import VimcanConfig
from vimcan_core.model.vimcan import Vimcan

log = logging.getLogger(__name__)

FORMAT = "vimcan-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, model: Vimcan, metadata: dict[str, Any] | None = None, *, half: bool = False) -> Path:
    """Write ``model`` (config + weights) and JSON-able ``metadata`` to ``path``; returns the path."""
    path = Path(path)
    metadata = dict(metadata or {})
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint metadata for {path} must be JSON-able (str, numbers, lists, dicts): {exc}") from exc
    dtype = torch.float16 if half else torch.float32
    state = {k: (v.detach().to("cpu", dtype) if v.is_floating_point() else v.detach().cpu()).clone()
             for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "metadata": metadata,
        "dtype": "float16" if half else "float32",
        "state_dict": state,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint under the real name
    log.info("saved checkpoint %s (%s, %.1f MB)", path, payload["dtype"], path.stat().st_size / 1e6)
    return path


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw checkpoint dict, validated; raises ``CheckpointError`` naming the path."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, pickled code...
        raise CheckpointError(f"checkpoint {path} is corrupt or not a VIMCAN checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a VIMCAN checkpoint (no '{FORMAT}' header)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {payload.get('version')}, this code reads {VERSION}")
    for key in ("config", "metadata", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"checkpoint {path} lacks its '{key}' section")
    return payload


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[Vimcan, dict[str, Any]]:
    """Build the model of the checkpoint at ``path`` and load its weights (float32, eval mode).
    Returns ``(model, metadata)``. A corrupt file or weights that do not fit the stored
    config raise ``CheckpointError`` naming the path."""
    payload = read_checkpoint(path)
    try:
        config = VimcanConfig.from_dict(payload["config"])
    except (VimcanError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has an invalid config: {exc}") from exc
    model = Vimcan(config)
    state = {k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not match its config {config}: {exc}") from exc
    model.eval()
    return model.to(device), payload["metadata"]
