"""Model making: needs PyTorch and is never in the packaged app.

    training       train the demo model on phantoms
    train_run      ``lantern-engine train``: a labelled folder into a bundle; its parts: train_options,
                   train_data (labels, images, split by patient), train_augment, train_weights
                   (--init), train_loop (+ train_checkpoint: --resume), train_bundle (temperature,
                   export, out-of-distribution statistics, test metrics), train_benchmark
    onnx_export    the bundle's model as ONNX with all-class gradients in the graph, verified;
                   its parts: export_modules (the torch modules to export), fx_rewrites (the
                   traced gradient in ops ONNX has), onnx_graph (the gradients behind an If, and
                   the graph surgery quantization shares), export_verification (against PyTorch
                   on held-out phantoms; for a multi-input model, on cases of one per input)
    quantization   static INT8 of that graph (int8_weights: each weight once, as int8, also for
                   the gradient part), validated against fp32 (int8_validation)
    checkpoint_bundle  a Hugging Face or timm checkpoint folder made a bundle, then exported
                   (``lantern-engine bundle --from``)

Nothing outside engine.cli imports this package (an import-linter contract in pyproject.toml).
"""
