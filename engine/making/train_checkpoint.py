"""The training checkpoint: one safetensors file, rewritten atomically after every epoch.

Tensors: the model's state (``model.*``), the optimizer's per-parameter state (``optimizer.<i>.<name>``:
Adam's moments and step, SGD's momentum) and, with early stopping, the best epoch's weights
(``best.*``). Everything else (epoch, history, early-stopping counters, the optimizer's parameter
groups, the scheduler's state, the options and the data's fingerprint) is JSON in the file's
metadata. One file, so that a crash while writing leaves the previous epoch's checkpoint whole;
nothing in it is pickled.

No random generator state is stored: the loop seeds torch at the start of every epoch from the run's
seed and the epoch (:func:`epoch_seed`), so a resumed run draws exactly what the uninterrupted one
did.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from engine.errors import LanternError
from engine.files import write_bytes_atomic

CHECKPOINT_FILE = "checkpoint.safetensors"
METADATA_KEY = "lantern.training"


def epoch_seed(seed: int, epoch: int) -> int:
    """The torch seed of one epoch (shuffling, augmentation, dropout)."""
    return (seed * 1_000_003 + epoch * 7_919 + 17) % (2**63 - 1)


def _plain(value: Any) -> Any:
    """JSON-safe: tuples as lists, non-finite floats as strings (strict JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item()
    return value


def _unplain(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"float"}:
            return float(value["float"])
        return {k: _unplain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unplain(v) for v in value]
    return value


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                    state: dict, best: dict[str, torch.Tensor] | None = None) -> Path:
    from safetensors.torch import save

    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    if best is not None:
        tensors.update({f"best.{k}": v.contiguous() for k, v in best.items()})
    opt = optimizer.state_dict()
    other_state: dict[str, dict] = {}
    for index, entries in opt["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().contiguous()
            else:  # SGD's momentum buffer before the first step is None
                other_state.setdefault(str(index), {})[name] = value
    record = {**state, "optimizer": {"param_groups": opt["param_groups"], "other_state": other_state},
              "scheduler": scheduler.state_dict()}
    # Tensors share no memory in a checkpoint: safetensors refuses aliases, so each is its own copy.
    data = save({k: v.clone() for k, v in tensors.items()}, metadata={METADATA_KEY: json.dumps(_plain(record))})
    return write_bytes_atomic(Path(folder) / CHECKPOINT_FILE, data)


def read_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The checkpoint's tensors and its JSON record."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        raise LanternError("there is no training checkpoint to resume from (the first epoch has not finished, "
                           "or this is not a folder 'lantern-engine train' wrote)", path)
    try:
        data = path.read_bytes()
        tensors = load(data)
        # The format's header: an 8-byte little-endian length, then JSON holding "__metadata__".
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        record = json.loads(header["__metadata__"][METADATA_KEY])
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise LanternError(f"the training checkpoint could not be read: {exc}", path) from exc
    return tensors, _unplain(record)


def part(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler,
            tensors: dict[str, torch.Tensor], record: dict) -> None:
    """Put the model, optimizer and scheduler back as they were when the checkpoint was written."""
    model.load_state_dict(part(tensors, "model"))
    state: dict[int, dict] = {}
    for key, value in part(tensors, "optimizer").items():
        index, _, name = key.partition(".")
        state.setdefault(int(index), {})[name] = value
    for index, entries in record["optimizer"]["other_state"].items():
        state.setdefault(int(index), {}).update(entries)
    optimizer.load_state_dict({"state": state, "param_groups": record["optimizer"]["param_groups"]})
    scheduler.load_state_dict(record["scheduler"])
