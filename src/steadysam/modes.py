"""The names of the object-session modes: how a session turns clicks into a mask.

``focsam``    FocSAM's protocol (docs/focsam.md §1.2): single-mask output, the previous low-res
              logits as mask prompt, the focus refiner run once per object.
``sam-best``  SAM's multimask output, keeping the mask with the best predicted IoU.

``Predictor.new_object(mode=...)`` takes them, and ``steadysam eval --protocol`` names the
same choice. Torch-free, so the CLI can offer them without importing the predictor.
"""

from __future__ import annotations

MODES = ("focsam", "sam-best")
