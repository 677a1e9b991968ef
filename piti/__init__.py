"""PITI: pretraining is all you need for image-to-image translation.

The public API is deliberately short; everything else lives in the subpackages
(``piti.nn`` networks, ``piti.diffusion`` maths and samplers, ``piti.data``,
``piti.train``) and is documented there.
"""

from importlib import import_module

__version__ = "0.1.0"

# name -> module that defines it; imported on first use so that `import piti`
# stays cheap and a half-installed environment still gives clear errors.
_LAZY = {
    "create_model": "piti.presets",
    "list_presets": "piti.presets",
    "ModelConfig": "piti.presets",
    "load_checkpoint": "piti.checkpoints",
    "save_checkpoint": "piti.checkpoints",
    "load_model": "piti.checkpoints",
    "PITIPipeline": "piti.pipeline",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'piti' has no attribute {name!r}")
