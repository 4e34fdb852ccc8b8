"""``vimcan-studio``: the desktop window.

``--demo`` runs the simulated performer and sensors through the real pipeline; ``--live`` the real
drivers of the settings (or none yet: the devices panel adds them by spec). Without a display
(or with ``--headless``) the demo, or with ``--live`` the real devices, runs under a virtual X
server (Xvfb, started here through pyvirtualdisplay) for ``--seconds``, records a take, saves a
screenshot of the window and prints where both are.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_HEADLESS_SECONDS = 20.0
SCREEN_SIZE = (1600, 1000)


#: PySide6 releases that drop a reference to ``None`` on every call of a C++ method returning void
#: (``QLabel.setText``, ``QTimer.setInterval``, ``processEvents``, every repaint ...), and to
#: ``True`` / ``False`` likewise. On Python < 3.12, where these are not immortal, the process aborts
#: within seconds ("none_dealloc: deallocating None", "bool_dealloc").
#: 6.11.3 is not affected (measured with ``sys.getrefcount(None)`` around 200 calls).
PYSIDE_NONE_REFCOUNT_BUG = ("6.12.0",)
_NONE_REFCOUNT_RESERVE = 1 << 48  # decrements it takes to reach zero: centuries at 100k calls per second


def guard_none_refcount() -> bool:
    """Work around ``PYSIDE_NONE_REFCOUNT_BUG``: give ``None`` a huge reference count, as Python 3.12
    makes it immortal. Returns True when applied. Fix for good: ``pip install "PySide6-Essentials!=6.12.0"``."""
    import PySide6

    if sys.version_info >= (3, 12) or PySide6.__version__ not in PYSIDE_NONE_REFCOUNT_BUG:
        return False
    import ctypes

    applied = False
    for singleton in (None, True, False):  # bool-returning methods lose references to True / False too
        refcount = ctypes.c_ssize_t.from_address(id(singleton))  # ob_refcnt, the first field of a PyObject
        if refcount.value < _NONE_REFCOUNT_RESERVE:
            refcount.value += _NONE_REFCOUNT_RESERVE
            applied = True
    if applied:
        log.warning("PySide6 %s loses references to None on Python %d.%d; applied a guard. Install "
                    "another version to fix it: pip install 'PySide6-Essentials!=6.12.0'",
                    PySide6.__version__, *sys.version_info[:2])
    return True


def configure_qt_application() -> None:
    """Process-wide Qt set-up that must happen before the QApplication exists (idempotent).

    pyqtgraph caches GL shader programs per item class, so all GL widgets must share contexts;
    and the PySide6 release in use may need ``guard_none_refcount``."""
    from PySide6 import QtCore

    guard_none_refcount()
    QtCore.QCoreApplication.setAttribute(QtCore.Qt.ApplicationAttribute.AA_ShareOpenGLContexts, True)


def build_parser() -> argparse.ArgumentParser:
    from vimcan_core import __version__

    p = argparse.ArgumentParser(
        prog="vimcan-studio",
        description="VIMCAN Studio: live motion capture from a webcam and six IMUs, fused by the VIMCAN network.",
    )
    p.add_argument("--version", action="version", version=f"vimcan-studio {__version__}")
    p.add_argument("--demo", action="store_true", help="simulated performer and sensors (no hardware needed)")
    p.add_argument("--live", action="store_true",
                   help="real devices, even when none are set yet: add them in the Devices panel (spec, site, Add)")
    p.add_argument("--headless", action="store_true",
                   help="no window on screen: run under Xvfb for --seconds, save a screenshot and a take")
    p.add_argument("--seconds", type=float, default=DEFAULT_HEADLESS_SECONDS,
                   help=f"how long the headless run lasts (default {DEFAULT_HEADLESS_SECONDS:.0f})")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for the headless screenshot and take")
    p.add_argument("--device", action="append", metavar="SPEC", default=None,
                   help="an IMU to use (repeat for each; see `vimcan devices`), e.g. witmotion:/dev/ttyUSB0@115200; "
                        "remembered in the settings")
    p.add_argument("--camera", metavar="SOURCE", default=None,
                   help="webcam index, video file or URL for the keypoints (remembered); '' for none")
    p.add_argument("--settings", type=Path, default=None, help="use this INI file instead of the user's settings")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return p


def live_settings(settings):
    """``--live``: the settings without the simulated defaults ("sim" devices and camera), which have no
    place among real devices; what is left (possibly nothing) is what the studio opens."""
    from dataclasses import replace

    kept = [(d, s) for d, s in zip(settings.devices, settings.sites or [""] * len(settings.devices))
            if not d.startswith("sim")]
    sites = tuple(s for _, s in kept) if len(settings.sites) == len(settings.devices) else ()
    return replace(settings, devices=tuple(d for d, _ in kept), sites=sites,
                   camera="" if settings.camera in ("sim", "none") else settings.camera)


def display_available() -> bool:
    if sys.platform.startswith(("win", "darwin")):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    headless = args.headless or not display_available()
    display = None
    if headless:
        what = "live capture" if args.live else "the demo"
        if not args.headless:
            print(f"vimcan-studio: no display found ($DISPLAY is empty): running {what} headless under Xvfb "
                  f"for {args.seconds:.0f} s.", flush=True)
        else:
            print(f"vimcan-studio: headless run of {what} under Xvfb for {args.seconds:.0f} s.", flush=True)
        display = _start_virtual_display()
        args.demo = not args.live  # --live stays on the real devices, headless or not
    try:
        return _run(args, headless)
    finally:
        if display is not None:
            display.stop()


def _start_virtual_display():
    try:
        from pyvirtualdisplay import Display
    except ImportError:
        raise SystemExit("vimcan-studio: no display and pyvirtualdisplay is not installed. "
                         "Install it with `.venv/bin/pip install PyVirtualDisplay` and Xvfb with "
                         "`sudo apt-get install xvfb`, or run under a desktop session.")
    try:
        display = Display(visible=False, size=SCREEN_SIZE, color_depth=24)
        display.start()
    except Exception as exc:  # Xvfb missing: say how to get it
        raise SystemExit(f"vimcan-studio: could not start Xvfb ({exc}). Install it with "
                         "`sudo apt-get install xvfb libxcb-icccm4 libxcb-keysyms1`.")
    os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
    return display


def _run(args: argparse.Namespace, headless: bool) -> int:
    configure_qt_application()
    from dataclasses import replace

    from PySide6 import QtWidgets

    from app.live import uses_hardware
    from app.main_window import MainWindow, StudioOptions
    from app.settings import load_settings, open_qsettings
    from app.views.palette import apply_dark_theme
    from vimcan_core.errors import VimcanError

    qapp = QtWidgets.QApplication.instance() or QtWidgets.QApplication(sys.argv[:1])
    qapp.setApplicationName("VIMCAN Studio")
    qapp.setOrganizationName("VIMCAN")
    apply_dark_theme(qapp)
    qsettings = open_qsettings(args.settings)
    settings = load_settings(qsettings)
    if args.device:
        settings = replace(settings, devices=tuple(args.device), sites=())
    if args.camera is not None:
        settings = replace(settings, camera=args.camera)
    if args.live and not args.demo:
        settings = live_settings(settings)
    demo = args.demo or (not args.live and not uses_hardware(settings))
    if not demo:
        log.info("live devices: %s, camera %r", ", ".join(settings.devices), settings.camera or "none")
    # a headless run reads the user's settings but never writes them (its takes go to --out)
    keep = qsettings if (not headless or args.settings is not None) else None
    try:
        window = MainWindow(StudioOptions(demo=demo), settings=settings, qsettings=keep)
    except VimcanError as exc:
        print(f"vimcan-studio: {exc}", file=sys.stderr)
        return 1
    window.resize(1500, 920)
    window.show()
    if not headless:
        window.start()
        return qapp.exec()
    return _run_headless(qapp, window, args)


def _run_headless(qapp, window, args: argparse.Namespace) -> int:
    """Start the pipeline, record for ``args.seconds``, screenshot, stop: all from Qt timers."""
    from PySide6 import QtCore

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    window.set_takes_dir(out / "takes")
    window.start()
    result: dict[str, object] = {}

    def begin() -> None:
        result["take_started"] = window.record_panel.start()

    def stop_take() -> None:
        result["take"] = window.record_panel.stop()  # the browser lists it before the screenshot

    def finish() -> None:
        shot = out / "studio.png"
        window.save_screenshot(shot)
        result["screenshot"] = shot
        result["frames"] = window.bridge.stats().frames
        window.close()
        qapp.quit()

    seconds = max(float(args.seconds), 3.0)
    QtCore.QTimer.singleShot(500, begin)
    QtCore.QTimer.singleShot(int((seconds - 1.0) * 1000), stop_take)
    QtCore.QTimer.singleShot(int(seconds * 1000), finish)
    qapp.exec()
    window.deleteLater()
    qapp.processEvents()
    qapp.shutdown()  # release the X connection before the virtual display goes away
    what = "the demo" if args.demo else "live capture"
    print(f"vimcan-studio: ran {what} for {args.seconds:.0f} s ({result.get('frames', 0)} poses shown).")
    print(f"  screenshot: {result.get('screenshot')}")
    print(f"  take:       {result.get('take')}")
    return 0 if result.get("take") and result.get("screenshot") else 1


if __name__ == "__main__":
    sys.exit(main())
