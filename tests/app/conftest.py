"""Qt set-up for the studio tests: must run before pytest-qt creates the QApplication."""

from __future__ import annotations

import pytest


def pytest_configure(config) -> None:
    # pyqtgraph caches its GL shader programs per item class, so every GL widget must share one
    # OpenGL context group (else a second GLViewWidget draws with a dead program: GL_INVALID_VALUE).
    from app.studio import configure_qt_application

    configure_qt_application()


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The studio limits torch to one intra-op thread (``app.live.limit_torch_threads``); give the
    rest of the suite back the count it had."""
    try:
        import torch  # the studio imports it anyway (model, re-solve); imported once per session
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)
