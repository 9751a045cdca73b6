"""slc: soft-label compression for dataset distillation and offline knowledge distillation."""
__version__ = "0.4.1"

from .errors import SlcError, SlcFormatError, SlcInputError  # noqa: E402
from .reader import SlcFile, open_slc  # noqa: E402
from .compress import compress  # noqa: E402
from .sources import open_labels  # noqa: E402
from .augment import Recipe  # noqa: E402
from .dataset import EpochSampler, SoftLabelDataset  # noqa: E402
from .encode import encode  # noqa: E402
from .encode_lm import encode_lm  # noqa: E402
from .sparse import SparseLabels  # noqa: E402
from .token_dataset import TokenLabelDataset, collate_tokens  # noqa: E402
from .distill import kd_loss  # noqa: E402

__all__ = ["SlcError", "SlcFormatError", "SlcInputError", "SlcFile", "open_slc", "compress", "encode", "Recipe", "open_labels",
           "SoftLabelDataset", "EpochSampler", "encode_lm", "SparseLabels", "TokenLabelDataset", "collate_tokens", "kd_loss",
           "__version__"]
