"""Moved to :mod:`slc.codecs.planner` in 0.5; this path (documented in 0.4) works through 0.6 and goes in 0.7."""
import warnings

from slc.codecs.planner import *  # noqa: F401,F403
from slc.codecs.planner import paper_pca_bytes, paper_topk_bytes, paper_vq_bytes  # noqa: F401

warnings.warn("slc.sizing moved to slc.codecs.planner (this path goes in slc 0.7)", DeprecationWarning, stacklevel=2)
