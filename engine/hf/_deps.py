"""The one place that imports transformers, so a missing install gives one clear message.

transformers is an optional extra of the package (``pip install 'hypencoder-engine[hf]'``):
the rest of the engine (q-nets, scoring, indexes, search) must import and work without it.
"""

from __future__ import annotations

INSTALL_HINT = (
    "loading Hypencoder checkpoints needs the 'transformers' package: "
    "pip install 'hypencoder-engine[hf]'  (or: pip install transformers tokenizers)"
)


def require_transformers():
    """Return the ``transformers`` module, or raise ImportError saying what to install."""
    try:
        import transformers
    except ImportError as exc:  # also raised when sys.modules['transformers'] is None
        raise ImportError(INSTALL_HINT) from exc
    return transformers
