"""Errors the pipeline raises for bad input.

Every error names the thing that is wrong (a file, a field, a preset) and how to fix it,
so a user never has to read a traceback from deep inside a library.
"""

from __future__ import annotations


class PipelineError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class ConfigError(PipelineError):
    """`params.yaml` (or a config dict) holds unknown or invalid values."""


class DataFormatError(PipelineError):
    """An annotation file is not in the layout its reader expects (Karpathy split, VQAv2, ...)."""


class ImageError(PipelineError):
    """An image file is missing or cannot be decoded."""


class ModelLoadError(PipelineError):
    """A model preset is unknown, or a pretrained directory does not match what was asked for."""


class TrackingError(PipelineError):
    """The MLflow tracking store or server cannot be reached."""
