"""What a training run leaves behind: checkpoints, the progress bar, the history and its curve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def progress_bar(enabled: bool, epochs: int) -> Any:
    """A tqdm bar over the epochs, or None when ``enabled`` is false."""
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=epochs, desc="training", unit="epoch")


def save_checkpoint(path: Path, state: dict[str, Any], row: dict[str, float]) -> None:
    """``state`` and the epoch's history row in ``path``, replaced atomically."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": state, "epoch": row}, tmp)
    tmp.replace(path)


def write_history(history: list[dict[str, float]], out_dir: Path, title: str) -> Path:
    """history.json and training_curve.png in ``out_dir``; returns the PNG."""
    from lab.evaluation.plots import plot_training_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n", encoding="utf-8")
    return plot_training_curve(history, out_dir / "training_curve.png", title=title)
