"""Helpers shared by the vLLM Hands-on notebooks.

Each module names the notebook that introduces it. Importing :mod:`helpers` is cheap: it
does not import torch, transformers or vLLM.
"""

import warnings

# tqdm.auto warns in notebooks when ipywidgets is missing; its text progress bars are fine.
warnings.filterwarnings("ignore", message="IProgress not found")

from .errors import CourseError, DownloadError, ModelFilesError, SettingsError
from .settings import Settings, get_settings

__all__ = ["CourseError", "DownloadError", "ModelFilesError", "SettingsError", "Settings", "get_settings"]
__version__ = "0.1.0"
