"""Qt set-up for the studio tests: must run before pytest-qt creates the QApplication."""

from __future__ import annotations


def pytest_configure(config) -> None:
    # pyqtgraph caches its GL shader programs per item class, so every GL widget must share one
    # OpenGL context group (else a second GLViewWidget draws with a dead program: GL_INVALID_VALUE).
    from app.studio import configure_qt_application

    configure_qt_application()
