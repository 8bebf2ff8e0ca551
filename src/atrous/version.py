"""The package's version, in a leaf module so that what writes it into files (exports, caches) imports no package face."""

__version__ = "0.1.0"
