"""What every gradient-trained router shares: seeding and a progress bar per epoch."""

from __future__ import annotations

import random
from collections.abc import Iterable

import numpy as np
import torch
from tqdm.auto import tqdm


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def progress(iterable: Iterable, desc: str, total: int | None = None, enabled: bool = True):
    return tqdm(iterable, desc=desc, total=total, disable=not enabled, leave=False)
