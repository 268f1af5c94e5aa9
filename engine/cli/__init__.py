"""``lantern-engine``, the engine from the command line. Not imported by the runtime, the
workflows or the viewer (import-linter contracts in pyproject.toml).

    main               the argument parser and dispatch
    commands           explain, bundle, train-demo, export, quantize
    batch_command      batch (its exports)
    evaluate_command   evaluate
    bench              bench: forward vs analysis, throughput, memory, package size
"""
