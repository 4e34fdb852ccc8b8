"""Shared test fixtures: where the real data is, and a per-test output folder."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("VIMCAN_SHARED_DATA", ROOT.parent / "shared" / "data"))
OUTPUT_ROOT = ROOT / "test-output"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real CMU motion, IMU recordings, videos); skips when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def output_dir(request: pytest.FixtureRequest) -> Path:
    """A folder kept after the run (screenshots, takes): test-output/<test name>/."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid.replace("tests/", ""))
    path = OUTPUT_ROOT / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a shared, oversubscribed CPU two threads are several times slower.

    Modules whose tests run the network use it for every test with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh VIMCAN Studio config folder (profiles, last profile) for the test: ``$VIMCAN_CONFIG_DIR``."""
    from vimcan_core.calibration_profile import ENV_CONFIG_DIR

    monkeypatch.setenv(ENV_CONFIG_DIR, str(tmp_path / "config"))
    return tmp_path / "config"
