"""ferpipe: a reproducible facial-expression-recognition pipeline and trainer."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `ferpipe.load_model(...)` without making `import ferpipe` import torch.
    if name == "load_model":
        from ferpipe.predict.model import load_model

        return load_model
    raise AttributeError(f"module 'ferpipe' has no attribute {name!r}")
