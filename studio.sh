#!/usr/bin/env bash
# VIMCAN Studio set-up and entry points. Two commands do everything:
#   ./studio.sh demo   install (system packages, .venv, torch CPU, the project) and start the demo
#   ./studio.sh test   install the test extras too and run the whole test suite
# Also: ./studio.sh install [--cuda]   only install.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
TORCH_VERSION=2.13.0

# Debian packages that Qt's xcb platform, OpenGL under Xvfb and the tests need.
APT_PACKAGES=(xvfb libgl1 libegl1 libgl1-mesa-dri libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1
  libxcb-image0 libxcb-render-util0 libxcb-xinerama0 libxcb-xkb1 libxkbcommon-x11-0 libxcb-shape0
  libxcb-randr0 libxcb-xfixes0 libfontconfig1 libdbus-1-3 xauth
  gcc libgomp1)  # gcc: the fused CPU selective-scan kernel is compiled on first use (optional, falls back)
APT_TEST_PACKAGES=(blender)

say() { printf '\033[1m[vimcan]\033[0m %s\n' "$*"; }

install_system_packages() {
  local missing=()
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo"; else
      say "missing system packages: ${missing[*]}"
      say "install them with: sudo apt-get install ${missing[*]}  (continuing without them)"
      return 0
    fi
  fi
  if ! command -v apt-get >/dev/null; then
    say "not a Debian/Ubuntu system: please install the equivalents of: ${missing[*]}"
    return 0
  fi
  say "installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_python() {
  local extras="$1"
  if [ ! -x "$PY" ]; then
    say "creating $VENV"
    python3 -m venv "$VENV"
  fi
  # torch first and pinned: a CPU machine must not pull the multi-GB CUDA build
  if ! "$PY" -c "import torch" 2>/dev/null; then
    say "installing torch==$TORCH_VERSION"
    "$PY" -m pip install -q "torch==$TORCH_VERSION"
  fi
  say "installing vimcan-studio${extras}"
  "$PY" -m pip install -q -e ".${extras}"
}

cmd=${1:-demo}
shift || true
case "$cmd" in
  install)
    install_system_packages "${APT_PACKAGES[@]}"
    if [ "${1:-}" = "--cuda" ]; then install_python "[cuda]"; else install_python ""; fi
    ;;
  demo)
    install_system_packages "${APT_PACKAGES[@]}"
    install_python ""
    if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
      say "starting VIMCAN Studio in demo mode"
      exec "$VENV/bin/vimcan-studio" --demo "$@"
    else
      say "no display found: running the same demo headless under Xvfb for 20 s"
      exec "$VENV/bin/vimcan-studio" --demo --headless --seconds 20 --out "$ROOT/out/demo" "$@"
    fi
    ;;
  test)
    install_system_packages "${APT_PACKAGES[@]}" "${APT_TEST_PACKAGES[@]}"
    install_python "[test]"
    say "running the test suite"
    exec "$PY" -m pytest "$@"
    ;;
  *)
    echo "usage: $0 demo|test|install [--cuda]" >&2
    exit 2
    ;;
esac
