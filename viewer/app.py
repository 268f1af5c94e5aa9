"""`lantern` command: the viewer, plus its headless --bench and --screenshots modes."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from engine import DEMO_MODEL, DEMO_STUDIES, ENGINES
from viewer.about import install_about
from viewer.qt_app import headless_if_needed, make_app

ENGINE_CHOICES = ("auto", *ENGINES)

log = logging.getLogger("lantern.app")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lantern", description=__doc__)
    parser.add_argument("paths", nargs="*", metavar="FILES_OR_FOLDER",
                        help="images or folders to open (default: the demo studies)")
    parser.add_argument("--model", type=Path, help="model bundle folder (default: the demo model)")
    parser.add_argument("--engine", choices=ENGINE_CHOICES, help="inference engine (default: remembered, else auto)")
    parser.add_argument("--screenshots", type=Path, metavar="DIR", help="render documentation PNGs and exit")
    parser.add_argument("--bench", action="store_true", help="measure display and analysis latency and exit")
    parser.add_argument("--json", action="store_true", help="with --bench: print one JSON object")
    parser.add_argument("--selftest", action="store_true",
                        help="open and analyse the demo study headless, check the result, exit non-zero on failure")
    parser.add_argument("--selftest-png", type=Path, metavar="PNG", help="with --selftest: where to save the window")
    parser.add_argument("--settings", type=Path, help=argparse.SUPPRESS)  # tests, screenshots
    return parser.parse_args(argv)


def default_paths(args) -> list[Path]:
    if args.paths:
        return [Path(p) for p in args.paths]
    return [DEMO_STUDIES] if DEMO_STUDIES.is_dir() and any(DEMO_STUDIES.iterdir()) else []


def default_model(args, remembered: str = "") -> Path | None:
    if args.model:
        return args.model
    if (DEMO_MODEL / "manifest.json").is_file():
        return DEMO_MODEL
    if remembered and (Path(remembered) / "manifest.json").is_file():
        return Path(remembered)
    return None


def install_excepthook(window) -> None:
    """An exception escaping a Qt slot is logged with its traceback and shown in the banner;
    the window stays open."""
    def hook(kind, value, tb):
        log.error("unexpected error", exc_info=(kind, value, tb))
        try:
            window.show_error(f"Unexpected error: {value}. Details are in {window.log_path}")
        except RuntimeError:  # the window is already gone (shutdown); the log has it
            sys.__excepthook__(kind, value, tb)

    sys.excepthook = hook


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.bench or args.screenshots:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    headless_if_needed()
    app = make_app()
    from viewer.logs import setup_logging

    log_path = setup_logging()
    log.info("Lantern viewer starting")
    if args.bench:
        from viewer.bench import run_bench

        return run_bench(as_json=args.json, model=default_model(args), engine_name=args.engine or "auto")
    if args.selftest:
        from viewer.selftest import run_selftest

        return run_selftest(default_model(args), args.paths[0] if args.paths else None, args.selftest_png,
                            args.engine or "onnx-int8")
    if args.screenshots:
        from viewer.screenshots import render_screenshots

        return render_screenshots(args.screenshots, default_paths(args), default_model(args), args.engine or "auto")

    from viewer.main_window import MainWindow
    from viewer.settings import Settings

    settings = Settings(args.settings)
    window = MainWindow(settings)
    window.log_path = log_path
    install_excepthook(window)
    install_about(window)
    engine_name = args.engine or settings.get("engine")
    if args.engine:
        settings.set("engine", args.engine)
    model = default_model(args, settings.get("model"))
    if model is not None:
        window.load_model(model, engine_name)
    else:
        window.show_status("No model: use File > Open model bundle (or --model).")
    paths = default_paths(args)
    if paths:
        window.open_paths(paths)
    window.resize(1600, 960) if settings.q.value("geometry") is None else None
    window.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
