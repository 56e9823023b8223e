"""mini_encdec: a readable NumPy reference implementation of Encoder-Decoder Gemma (T5Gemma).

Importing the package never imports torch, transformers or matplotlib.
"""

from .backend import get_backend, set_backend, use_backend  # noqa: F401
from .config import (EncDecConfig, GemmaConfig, count_parameters, encdec_preset,  # noqa: F401
                     preset)

__version__ = "0.1.0"
