"""Moved to :mod:`slc.lm.distill` in 0.5; this path (documented in 0.4) works through 0.6 and goes in 0.7."""
import warnings

from slc.lm.distill import *  # noqa: F401,F403
from slc.lm.distill import kd_loss  # noqa: F401

warnings.warn("slc.distill moved to slc.lm.distill (this path goes in slc 0.7)", DeprecationWarning, stacklevel=2)
