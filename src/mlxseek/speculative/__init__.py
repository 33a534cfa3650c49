"""Self-speculative decoding: draft with the model's own drafter (MTP, or DSpark on V4-0731/0813) through one
drafter protocol (`drafter`), verify in one forward, roll the caches back (see `step`). The drafter's state
travels with the prompt cache (`cache.draft`)."""

from .policy import DraftPolicy, DraftStats
from .sampling import DistributionSampler, make_sampler, rejection_sample
from .step import DRAFT_MODES, check_draft_args, resolve_drafter, speculative_generate_step

__all__ = ["DRAFT_MODES", "DistributionSampler", "DraftPolicy", "DraftStats", "check_draft_args", "make_sampler",
           "rejection_sample", "resolve_drafter", "speculative_generate_step"]
