"""Knowledge mining from a promptable foundation model into a small 2D model (Mao et al. 2025).

- :mod:`.base`: the :class:`PromptableSegmenter` interface, :class:`Prompt`, :class:`Segmentation`;
- :mod:`.prompts`: prompts (box, positive / negative points) from a predicted mask;
- :mod:`.refiners`: the weight-free random-walker refiner; :mod:`.sam`: SAM through HF
  ``transformers`` (imported only when used);
- :mod:`.iterative`: rounds of prompt -> refine per slice; :mod:`.select`: pseudo-label selection;
- :mod:`.data2d`, :mod:`.train2d`: 2D samples (volume slices, image folders) and the small model's
  training; :mod:`.export`: pseudo-label volumes; :mod:`.dataset3d`: a real + pseudo-labelled 3D
  training dataset in the source's layout (the 3D route);
- :mod:`.config`: the run's config; :mod:`.loop`: the mining loop, :func:`run_mining`.
"""
from .base import Prompt, PromptableSegmenter, Segmentation
from .iterative import IterateOptions, RefinedSlice, refine_iteratively
from .config import MiningConfig, load_mining_config
from .loop import run_mining
from .prompts import PromptOptions, prompts_from_label, prompts_from_mask
from .refiners import RandomWalkerOptions, RandomWalkerRefiner
from .select import Candidate, SelectOptions, select_pseudo_labels

__all__ = [
    "Candidate", "IterateOptions", "MiningConfig", "Prompt", "PromptOptions", "PromptableSegmenter",
    "RandomWalkerOptions", "RandomWalkerRefiner", "RefinedSlice", "Segmentation", "SelectOptions",
    "load_mining_config", "prompts_from_label", "prompts_from_mask", "refine_iteratively", "run_mining",
    "select_pseudo_labels",
]
