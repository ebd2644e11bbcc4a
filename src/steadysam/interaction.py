"""One object's interaction: its prompts and predictions, with undo. Shared by the PyTorch
``ObjectSession`` and the torch-free ``OnnxObjectSession``, which differ only in how they check
a prompt and make a prediction (this module imports no torch)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class InteractionState:
    """The prompts so far and what they produced."""

    clicks: tuple[tuple[float, float, bool], ...] = ()
    box: tuple[float, float, float, float] | None = None
    logits: Any = None  # 1 x 1 x h x w low-res logits of the last prediction (tensor or array)
    embedding: Any = None  # refined embedding (FocSAM), None before the refiner
    mask: np.ndarray | None = None


class Interaction:
    """``click`` and ``set_box`` return the H x W boolean mask at original resolution; ``undo``
    restores the previous state exactly (including the unrefined embedding when it undoes the
    click that ran the refiner). Subclasses implement ``_check_click``, ``_check_box`` and
    ``_predict`` (which appends the new state)."""

    def __init__(self) -> None:
        self._history: list[InteractionState] = [InteractionState()]

    @property
    def _state(self) -> InteractionState:
        return self._history[-1]

    @property
    def clicks(self) -> list[tuple[float, float, bool]]:
        return list(self._state.clicks)

    @property
    def box(self) -> tuple[float, float, float, float] | None:
        return self._state.box

    @property
    def logits(self) -> Any:
        """The last prediction's 1 x 1 x h x w low-res logits (None before the first)."""
        return self._state.logits

    @property
    def mask(self) -> np.ndarray | None:
        return self._state.mask

    @property
    def refined(self) -> bool:
        return self._state.embedding is not None

    def click(self, x: float, y: float, positive: bool = True) -> np.ndarray:
        """Add a click at (x, y) in original image pixels (column, row), 0 <= x < W and
        0 <= y < H."""
        self._check_click(x, y)
        clicks = self._state.clicks + ((float(x), float(y), bool(positive)),)
        return self._predict(clicks, self._state.box)

    def set_box(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """Set (or replace) the object's box prompt, in original pixels (x0, y0, x1, y1), with
        x1 > x0, y1 > y0 and some overlap with the image."""
        self._check_box(x0, y0, x1, y1)
        return self._predict(self._state.clicks, (float(x0), float(y0), float(x1), float(y1)))

    def undo(self) -> np.ndarray | None:
        """Remove the last interaction; returns the mask before it (None when back at start)."""
        if len(self._history) > 1:
            self._history.pop()
        return self._state.mask

    def reset(self) -> None:
        self._history = [InteractionState()]

    def _check_click(self, x: float, y: float) -> None:
        raise NotImplementedError

    def _check_box(self, x0: float, y0: float, x1: float, y1: float) -> None:
        raise NotImplementedError

    def _predict(
        self, clicks: tuple[tuple[float, float, bool], ...], box: tuple[float, ...] | None
    ) -> np.ndarray:
        raise NotImplementedError
