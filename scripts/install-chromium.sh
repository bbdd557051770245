#!/usr/bin/env bash
# Installs Debian's headless Chromium and a font for the browser tests
# (webtest/) if they are missing; does nothing when both are there, so it is
# safe to run before every test run. Needs root, or sudo without a password.
# Usage: scripts/install-chromium.sh
set -euo pipefail

have_chromium() { command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; }
# Without a font, Chromium renders every glyph as nothing and the screenshots
# show boxes without text.
have_font() { command -v fc-list >/dev/null 2>&1 && [ -n "$(fc-list 2>/dev/null | head -n 1)" ]; }

if have_chromium && have_font; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  as_root=(sudo -n)
else
  echo "install-chromium.sh: chromium is not installed and this user can neither install packages (not root) nor use sudo without a password; install Debian's 'chromium' and 'fonts-dejavu-core' packages by hand" >&2
  exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-chromium.sh: no apt-get here; install Chromium (chromium or chromium-browser on PATH) and a font by hand" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -q
"${as_root[@]}" apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core fontconfig

if ! have_chromium; then
  echo "install-chromium.sh: apt-get installed chromium but neither chromium nor chromium-browser is on PATH" >&2
  exit 1
fi
chromium_bin="$(command -v chromium || command -v chromium-browser)"
echo "install-chromium.sh: $("$chromium_bin" --version 2>/dev/null || echo "$chromium_bin")"
