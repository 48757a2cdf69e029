"""Loading Hypencoder checkpoints (needs the optional ``transformers`` dependency).

Importing this package does not import transformers; loading a model does, and raises an
ImportError naming what to install when it is missing.
"""

from .checkpoint import CheckpointConfig, qnet_config_from_converter
from .hyper_head import HyperHead
from .model import HypencoderModel

__all__ = ["CheckpointConfig", "HyperHead", "HypencoderModel", "qnet_config_from_converter"]
