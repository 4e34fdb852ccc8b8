"""The devices panel: each sensor and camera with its state, rate, last-sample age, battery,
losses and body site; connect and disconnect one device or all of them; add a device by its spec
(``sensors.spec``: ``witmotion:/dev/ttyUSB0@115200?rate=100&quat=1``, ``camera:0``...) at a site,
remove one; discover new ones.

It works on ``sensors.device.Device`` objects (``device_id``, ``kind``, ``stats()``,
``start()``, ``stop()``), whatever their driver, and refreshes from a timer of the main window
(``refresh``); stats are read under each device's own lock, so this never blocks on a device.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Sequence

from PySide6 import QtCore, QtGui, QtWidgets

from app.views.palette import ERROR_RGB, OK_RGB, TEXT_RGB, WARN_RGB, hex_rgb
from sensors.device import Device, DeviceState
from vimcan_core.skeleton import IMU_SITE_NAMES, ImuSite

log = logging.getLogger(__name__)

COLUMNS = ("Device", "Kind", "State", "Rate", "Last sample", "Battery", "Lost", "Site")
#: the longest text each column shows, so that columns sized once never truncate later values
WIDEST_TEXT = {"Kind": "camera", "State": "reconnecting", "Rate": "100.0 Hz", "Last sample": "9999 ms",
               "Battery": "100 %", "Lost": "9999", "Site": "right lower leg"}
NEXT_FREE_SITE = "next free site"
SPEC_EXAMPLES = "witmotion:/dev/ttyUSB0@115200?rate=100&quat=1, line:COM4, dot:ADDRESS, camera:0, camera:clip.mp4"
STATE_RGB = {
    DeviceState.STREAMING: OK_RGB,
    DeviceState.CONNECTING: WARN_RGB,
    DeviceState.RECONNECTING: WARN_RGB,
    DeviceState.STALLED: WARN_RGB,
    DeviceState.DISCONNECTED: ERROR_RGB,
    DeviceState.STOPPED: (148, 163, 184),
    DeviceState.IDLE: (148, 163, 184),
}


class DevicesPanel(QtWidgets.QWidget):
    """A table of devices with connect / disconnect / discover buttons.

    ``devices`` is a callable returning the current devices (the pipeline's). ``discover``
    (optional) searches serial ports and Bluetooth and returns ``(description, spec or None)``
    per device found; it blocks for seconds, so it runs in a worker thread and its result comes
    back through ``discovered``. "Use found sensors" emits ``use_specs`` with the specs found.
    """

    devices_changed = QtCore.Signal()
    discovered = QtCore.Signal(list)  # [(description, spec | None)] of what the search found
    use_specs = QtCore.Signal(list)  # the user chose these device specs (the found ones)
    add_requested = QtCore.Signal(str, object)  # a spec typed in, and the ImuSite chosen for it (None: next free)
    remove_requested = QtCore.Signal(list)  # the selected devices
    _discover_failed = QtCore.Signal(str)

    def __init__(self, devices: Callable[[], Sequence[Device]], discover: Callable[[], object] | None = None,
                 parent: QtWidgets.QWidget | None = None,
                 site_of: Callable[[Device], ImuSite | None] | None = None) -> None:
        super().__init__(parent)
        self._devices = devices
        self._discover = discover
        self._site_of = site_of or (lambda _device: None)
        self.table = QtWidgets.QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QtWidgets.QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QtWidgets.QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QtWidgets.QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QtWidgets.QHeaderView.ResizeMode.Stretch)
        self.table.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.table.setAlternatingRowColors(True)
        self.table.setTextElideMode(QtCore.Qt.TextElideMode.ElideMiddle)  # long ids keep their distinctive end
        self.table.verticalHeader().setDefaultSectionSize(24)
        self.table.setMinimumHeight(24 * 7 + 40)  # six IMUs and a camera without scrolling

        self.connect_button = QtWidgets.QPushButton("Connect")
        self.disconnect_button = QtWidgets.QPushButton("Disconnect")
        self.connect_all_button = QtWidgets.QPushButton("Connect all")
        self.disconnect_all_button = QtWidgets.QPushButton("Disconnect all")
        self.discover_button = QtWidgets.QPushButton("Discover…")
        self.discover_button.setEnabled(discover is not None)
        self.discover_button.setToolTip("Search serial ports and Bluetooth for IMUs and cameras")
        self.connect_button.clicked.connect(lambda: self._apply_selected(True))
        self.disconnect_button.clicked.connect(lambda: self._apply_selected(False))
        self.connect_all_button.clicked.connect(lambda: self.set_all_connected(True))
        self.disconnect_all_button.clicked.connect(lambda: self.set_all_connected(False))
        self.discover_button.clicked.connect(self._on_discover)

        # add by spec, at a site; remove the selected devices
        self.spec_edit = QtWidgets.QLineEdit()
        self.spec_edit.setPlaceholderText("device spec, e.g. witmotion:/dev/ttyUSB0@115200 or camera:0")
        self.spec_edit.setToolTip("A device spec (see `vimcan devices`): " + SPEC_EXAMPLES)
        self.site_box = QtWidgets.QComboBox()
        self.site_box.addItem(NEXT_FREE_SITE, None)
        for site in ImuSite:
            self.site_box.addItem(IMU_SITE_NAMES[site].replace("_", " "), site)
        self.site_box.setToolTip("The body site of an IMU (a camera has none)")
        self.add_button = QtWidgets.QPushButton("Add")
        self.add_button.setToolTip("Connect this device now, at this site")
        self.remove_button = QtWidgets.QPushButton("Remove")
        self.remove_button.setToolTip("Disconnect the selected devices and take them out of the studio")
        self.add_button.clicked.connect(self._on_add)
        self.spec_edit.returnPressed.connect(self._on_add)
        self.remove_button.clicked.connect(self._on_remove)
        self.message_label = QtWidgets.QLabel("")
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message_label.hide()

        buttons = QtWidgets.QHBoxLayout()
        for b in (self.connect_button, self.disconnect_button, self.connect_all_button,
                  self.disconnect_all_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        buttons.addWidget(self.discover_button)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        self.found_label = QtWidgets.QLabel("")
        self.found_label.setWordWrap(True)
        self.found_label.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.table)
        layout.addLayout(buttons)
        add_row = QtWidgets.QHBoxLayout()
        add_row.addWidget(self.spec_edit, 1)
        add_row.addWidget(self.site_box)
        add_row.addWidget(self.add_button)
        add_row.addWidget(self.remove_button)
        layout.addLayout(add_row)
        layout.addWidget(self.message_label)
        layout.addWidget(self.found_label)
        self.found_label.hide()
        self.use_button = QtWidgets.QPushButton("Use found sensors")
        self.use_button.setToolTip("Remember the sensors found; the studio connects them at the next start")
        self.use_button.hide()
        self.use_button.clicked.connect(lambda: self.use_specs.emit(list(self.found_specs)))
        layout.addWidget(self.use_button)
        self.found_specs: list[str] = []
        self._shown_ids: tuple[str, ...] = ()  # the devices the table rows are for
        self._discover_thread: threading.Thread | None = None
        self.discovered.connect(self._show_found)
        self._discover_failed.connect(self._show_failed)
        self.refresh()

    # ------------------------------------------------------------------ actions
    def set_connected(self, device: Device, connected: bool) -> None:
        """Start or stop one device's thread (the pipeline keeps reading its buffer)."""
        if connected and not device.running:
            log.info("connecting %s", device.device_id)
            device.start()
        elif not connected and device.running:
            log.info("disconnecting %s", device.device_id)
            device.stop()
        self.refresh()
        self.devices_changed.emit()

    def set_all_connected(self, connected: bool) -> None:
        for device in self._devices():
            self.set_connected(device, connected)

    def _apply_selected(self, connected: bool) -> None:
        rows = {i.row() for i in self.table.selectedIndexes()}
        devices = list(self._devices())
        for row in sorted(rows):
            if row < len(devices):
                self.set_connected(devices[row], connected)

    def set_adding_enabled(self, enabled: bool, why: str = "") -> None:
        """Allow adding and removing devices (not in the demo, whose simulated rig is fixed)."""
        for w in (self.spec_edit, self.site_box, self.add_button, self.remove_button):
            w.setEnabled(enabled)
        self.spec_edit.setPlaceholderText(why if not enabled and why else
                                          "device spec, e.g. witmotion:/dev/ttyUSB0@115200 or camera:0")

    def request_add(self, spec: str, site: ImuSite | None = None) -> None:
        """What the Add button does: ``add_requested(spec, site)``; the owner adds it and calls ``show_message``."""
        spec = spec.strip()
        if not spec:
            self.show_message(f"type a device spec first, e.g. {SPEC_EXAMPLES}", error=True)
            return
        self.add_requested.emit(spec, site)

    def _on_add(self) -> None:
        self.request_add(self.spec_edit.text(), self.site_box.currentData())

    def _on_remove(self) -> None:
        rows = sorted({i.row() for i in self.table.selectedIndexes()})
        devices = list(self._devices())
        chosen = [devices[r] for r in rows if r < len(devices)]
        if not chosen:
            self.show_message("select the devices to remove in the table first", error=True)
            return
        self.remove_requested.emit(chosen)

    def show_message(self, text: str, error: bool = False) -> None:
        """One line under the buttons: what the last add or remove did, or why it could not."""
        colour = hex_rgb(ERROR_RGB if error else OK_RGB)
        self.message_label.setText(f"<span style='color:{colour}'>{text}</span>")
        self.message_label.show()

    def _on_discover(self) -> None:
        if self._discover is None or (self._discover_thread is not None and self._discover_thread.is_alive()):
            return
        self.discover_button.setEnabled(False)
        self.found_label.setText("searching serial ports and Bluetooth…")
        self.found_label.show()
        search = self._discover

        def work() -> None:
            try:
                lines = list(search())
            except Exception as exc:  # discovery errors are the user's business: show them
                self._discover_failed.emit(str(exc))
            else:
                self.discovered.emit(lines)

        self._discover_thread = threading.Thread(target=work, name="device-discovery", daemon=True)
        self._discover_thread.start()

    def _show_found(self, found: list) -> None:
        self.discover_button.setEnabled(True)
        lines = [f"{text}  →  {spec}" if spec else text for text, spec in found]
        self.found_label.setText("Found:\n" + "\n".join(lines) if lines else "no sensors found")
        self.found_specs = [spec for _, spec in found if spec]
        self.use_button.setVisible(bool(self.found_specs))
        for line in lines:
            log.info("discovered: %s", line)

    def _show_failed(self, message: str) -> None:
        self.discover_button.setEnabled(True)
        self.found_label.setText(f"search failed: {message}")
        log.error("device discovery failed: %s", message)

    # ------------------------------------------------------------------ display
    def refresh(self) -> None:
        devices = list(self._devices())
        ids = tuple(d.device_id for d in devices)
        resize = self.table.rowCount() != len(devices) or ids != self._shown_ids
        self._shown_ids = ids
        if resize:
            self.table.setRowCount(len(devices))
        for row, device in enumerate(devices):
            st = device.stats()
            age = "–" if st.last_sample_age_s is None else (
                f"{st.last_sample_age_s * 1000:.0f} ms" if st.last_sample_age_s < 10 else f"{st.last_sample_age_s:.0f} s")
            battery = "–" if st.battery_pct is None else f"{st.battery_pct:.0f} %"
            site = self._site_of(device)
            values = (
                device.device_id,
                device.kind.value,
                st.state.value,
                f"{st.rate_hz:5.1f} Hz",
                age,
                battery,
                f"{st.dropped}" + (f" (+{st.corrupt} bad)" if st.corrupt else ""),
                "–" if site is None else IMU_SITE_NAMES[site].replace("_", " "),
            )
            for col, text in enumerate(values):
                item = self.table.item(row, col)
                if item is None:
                    item = QtWidgets.QTableWidgetItem()
                    self.table.setItem(row, col, item)
                if item.text() != text:
                    item.setText(text)
                    if col == 0:
                        item.setToolTip(text)
                if col == 2:
                    item.setForeground(QtGui.QColor(*STATE_RGB.get(st.state, TEXT_RGB)))
                    item.setToolTip(st.last_error or "")
        if resize:  # size the columns once per set of devices: live resizing makes every update costly
            header = self.table.horizontalHeader()
            metrics = self.table.fontMetrics()
            for col in range(1, len(COLUMNS)):
                self.table.resizeColumnToContents(col)
                header.setSectionResizeMode(col, QtWidgets.QHeaderView.ResizeMode.Interactive)
                widest = metrics.horizontalAdvance(WIDEST_TEXT.get(COLUMNS[col], "")) + 10
                self.table.setColumnWidth(col, max(self.table.columnWidth(col), widest))

    def row_texts(self) -> list[tuple[str, ...]]:
        """The table as text (for tests and the headless report)."""
        return [tuple(self.table.item(r, c).text() if self.table.item(r, c) else "" for c in range(len(COLUMNS)))
                for r in range(self.table.rowCount())]
