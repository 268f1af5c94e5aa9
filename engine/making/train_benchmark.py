"""``lantern-engine train --benchmark``: training images per second on this machine.

What one training step of ``lantern-engine train`` does, on random inputs of the bundle's size:
augmentation (if asked), forward under the same precision, loss, backward and an AdamW step, in
channels-last layout. Image reading is not in it: train reads every image once, before the first
epoch. Use the figure to size a run: epochs x training images / (images per second) is the time
the epochs take, plus a validation pass per epoch (a forward only, about a third of a step).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from engine.backends.architectures import build_model
from engine.bundle import parse_manifest
from engine.making.train_augment import Augmenter
from engine.making.train_options import TrainOptions

WARMUP_STEPS = 2  # the first steps allocate and pick kernels


def benchmark_training(options: TrainOptions, steps: int = 6, log: Callable[[str], None] = print) -> dict:
    from engine.making.train_run import use_bf16

    options.check()
    bundle = parse_manifest(options.manifest(("a", "b", "c")), Path("benchmark"))
    bf16 = use_bf16(options.precision)
    torch.manual_seed(options.seed)
    model = build_model(bundle).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(options.batch, options.channels, *options.size)
    y = torch.randint(0, 3, (options.batch,))
    augment = Augmenter(options.augment, bundle.input)
    times = []
    for step in range(WARMUP_STEPS + steps):
        started = time.perf_counter()
        batch = augment(x) if augment else x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(batch)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= WARMUP_STEPS:
            times.append(time.perf_counter() - started)
    # The median step, and the fastest: on a shared machine other jobs slow some steps many times
    # over (bf16 on AMX most of all), and the fastest says what the machine does when left alone.
    seconds, fastest = sorted(times)[len(times) // 2], min(times)
    figures = {"architecture": options.arch, "input": [options.channels, *options.size], "batch": options.batch,
               "precision": "bfloat16 autocast" if bf16 else "float32", "threads": torch.get_num_threads(),
               "augment": list(options.augment), "seconds_per_step": round(seconds, 3),
               "images_per_second": round(options.batch / seconds, 1),
               "images_per_second_fastest_step": round(options.batch / fastest, 1),
               # Other jobs' share of the machine while it ran (none where the OS does not say).
               "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
               "cpus": os.cpu_count()}
    log(f"{options.arch} {options.channels} x {options.size[0]} x {options.size[1]}, batch {options.batch}, "
        f"{figures['precision']}, {figures['threads']} threads"
        + (f", augment {','.join(options.augment)}" if options.augment else "")
        + f": {figures['images_per_second']} training images/s (median of {steps} steps, {seconds:.2f} s each; "
          f"fastest step {figures['images_per_second_fastest_step']} images/s)"
        + (f"; load average {figures['load_average']} on {figures['cpus']} CPUs" if figures["load_average"] is not None
           else ""))
    return figures
