"""ferpipe: a reproducible facial-expression-recognition pipeline and trainer."""

__version__ = "0.1.0"
