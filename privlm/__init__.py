"""privlm: the shared library under the fingerprinting, private fine-tuning and Mosaic pipelines."""

__version__ = "0.1.0"
