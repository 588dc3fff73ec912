"""qadtr: quantization-aware training, adversarial patches and defences for low-bit CNNs."""

from qadtr._errors import QadtrError

__version__ = "0.1.0"

__all__ = ["QadtrError", "__version__"]
