# Lantern: `make run` opens the viewer on the demo study; `make test` runs the whole suite.
# Both set everything up first on a fresh machine (venv, pinned torch, Qt's system libraries).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.lantern-installed
# Qt's xcb/offscreen plugins need these at run time; xvfb gives a real window without a screen.
# nasm: the package's OpenCV compile (build/package_env.py) builds libjpeg-turbo's SIMD code with it.
QT_SYSTEM_LIBS := libegl1 libgl1 libglib2.0-0 libfontconfig1 libdbus-1-3 libxkbcommon0 \
	libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 \
	libxcb-render-util0 libxcb-shape0 libxcb-xkb1 libxcb-randr0 xvfb xauth nasm
# The tests check every DICOM file Lantern writes with dicom3tools' validator (dciodvfy), and talk
# to Lantern's DICOM node with real peers: dcmtk's storescu/echoscu/findscu/movescu and an Orthanc
# PACS that the tests start and stop themselves on loopback.
DICOM_TOOLS := dicom3tools dcmtk orthanc
SYSTEM_PACKAGES := $(QT_SYSTEM_LIBS) $(DICOM_TOOLS)

.PHONY: setup system-deps run test bench screenshots package demo-model clean

setup: $(STAMP)

# Installs Qt's system libraries and the DICOM tools the tests use with apt-get when running as
# root (CI, fresh machines); otherwise only says which are missing.
system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
		dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "Installing system packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	elif command -v dpkg >/dev/null; then \
		echo "note: Qt and the tests may need these system packages:$$missing"; fi

$(STAMP): pyproject.toml Makefile
	$(MAKE) system-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[torch,train,viewer,dev,package,hub,service,cluster]'
	touch $@

run: $(STAMP)
	@if [ -z "$$DISPLAY$$WAYLAND_DISPLAY" ] && [ "$$QT_QPA_PLATFORM" != offscreen ]; then \
		echo "No display found: running the viewer under xvfb-run."; \
		xvfb-run -a $(BIN)/lantern; \
	else $(BIN)/lantern; fi

test: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/lantern-engine bench
	$(BIN)/lantern --bench

# Renders the main window, the compare view and an error state to PNG (headless).
screenshots: $(STAMP)
	QT_QPA_PLATFORM=offscreen $(BIN)/lantern --screenshots docs/screenshots

# Re-trains the demo model from synthetic phantoms (16 minutes on 2 cores with bfloat16 in hardware), then
# exports and quantizes it (training rewrites the manifest) and refreshes the self-test figures.
demo-model: $(STAMP)
	$(BIN)/lantern-engine train-demo --out resources/models/demo
	$(BIN)/lantern-engine export resources/models/demo
	$(BIN)/lantern-engine quantize resources/models/demo --drop-fp32
	QT_QPA_PLATFORM=offscreen $(BIN)/python -m viewer.selftest --write-reference

# The slim, torch-free one-folder app in dist/lantern/ and its archive, then the app's own
# --selftest (docs/installing.md). The first run also makes the packaging environment and
# compiles OpenCV's three modules (about 12 minutes, once, kept in build/work/); an unchanged
# build is reused; `python build/package.py --force` rebuilds.
package: $(STAMP)
	$(BIN)/python build/package.py

clean:
	rm -rf $(VENV) dist build/work
