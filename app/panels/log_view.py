"""The log view: what the user needs to see (warnings and errors by default), from any thread.

``QtLogHandler`` is a ``logging.Handler`` that may be called from device and pipeline threads;
it formats the record there and emits a Qt signal, which Qt queues to the UI thread, where the
``LogView`` appends it. Nothing in a worker thread touches a widget.
"""

from __future__ import annotations

import logging

from PySide6 import QtCore, QtGui, QtWidgets

from app.views.palette import ERROR_RGB, TEXT_RGB, WARN_RGB, hex_rgb

MAX_LINES = 2000  # older lines are dropped by the text widget


class _Emitter(QtCore.QObject):
    record = QtCore.Signal(int, str)  # level number, formatted line


class QtLogHandler(logging.Handler):
    """Forwards log records to the UI thread through a signal (``emitter.record``)."""

    def __init__(self, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.emitter = _Emitter()
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
            self.emitter.record.emit(record.levelno, line)
        except RuntimeError:  # the emitter's C++ object is gone (window closed at shutdown)
            pass
        except Exception:
            self.handleError(record)


class LogView(QtWidgets.QWidget):
    """Log lines with a level filter; errors in red, warnings in amber."""

    LEVELS = (("Errors", logging.ERROR), ("Warnings", logging.WARNING), ("Info", logging.INFO), ("Debug", logging.DEBUG))

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.text = QtWidgets.QPlainTextEdit(readOnly=True)
        self.text.setMaximumBlockCount(MAX_LINES)
        self.text.setFont(QtGui.QFontDatabase.systemFont(QtGui.QFontDatabase.SystemFont.FixedFont))
        self.level_box = QtWidgets.QComboBox()
        for name, level in self.LEVELS:
            self.level_box.addItem(name, level)
        self.level_box.setCurrentIndex(2)
        clear = QtWidgets.QPushButton("Clear")
        clear.clicked.connect(self.text.clear)
        top = QtWidgets.QHBoxLayout()
        top.addWidget(QtWidgets.QLabel("Show"))
        top.addWidget(self.level_box)
        top.addStretch(1)
        top.addWidget(clear)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(top)
        layout.addWidget(self.text)
        self.counts = {logging.WARNING: 0, logging.ERROR: 0}
        self.handler: QtLogHandler | None = None

    def install(self, logger: logging.Logger | None = None, level: int = logging.INFO) -> QtLogHandler:
        """Attach a handler to ``logger`` (the root logger by default); ``uninstall`` removes it."""
        self.handler = QtLogHandler(level)
        self.handler.emitter.record.connect(self.append)
        self._logger = logger or logging.getLogger()
        self._logger.addHandler(self.handler)
        if self._logger.level > level or self._logger.level == logging.NOTSET:
            self._logger.setLevel(level)
        return self.handler

    def uninstall(self) -> None:
        if self.handler is not None:
            self._logger.removeHandler(self.handler)
            self.handler = None

    @QtCore.Slot(int, str)
    def append(self, levelno: int, line: str) -> None:
        if levelno >= logging.ERROR:
            self.counts[logging.ERROR] += 1
        elif levelno >= logging.WARNING:
            self.counts[logging.WARNING] += 1
        if levelno < int(self.level_box.currentData()):
            return
        rgb = ERROR_RGB if levelno >= logging.ERROR else WARN_RGB if levelno >= logging.WARNING else TEXT_RGB
        escaped = line.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        self.text.appendHtml(f"<span style='color:{hex_rgb(rgb)}'>{escaped}</span>")

    def lines(self) -> list[str]:
        return self.text.toPlainText().splitlines()
