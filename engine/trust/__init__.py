"""Can this map be trusted? Checks that run beside an analysis, in the packaged app too.

    faithfulness   deletion / insertion curves and their AUC (does the map point at what the
                   model uses?)
    sanity         model-randomisation check (does the map change when the weights do?)
    similarity     rank correlation, SSIM and method agreement between maps
    calibration    reliability diagram and expected calibration error, per-class cut-offs
    temperature    temperature scaling fitted on labelled cases, stored in the bundle
"""
