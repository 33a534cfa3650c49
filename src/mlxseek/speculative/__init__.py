"""MTP self-speculative decoding: draft with the model's own Multi-Token-Prediction module, verify in one
forward, roll the caches back (see `step`). Its state travels with the prompt cache (`cache.mtp`)."""

from .policy import DraftPolicy, DraftStats
from .sampling import DistributionSampler, make_sampler, rejection_sample
from .step import DRAFT_MODES, check_draft_args, speculative_generate_step

__all__ = ["DRAFT_MODES", "DistributionSampler", "DraftPolicy", "DraftStats", "check_draft_args", "make_sampler",
           "rejection_sample", "speculative_generate_step"]
