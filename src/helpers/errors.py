"""Exceptions raised by the course helpers.

Every error a learner can cause (bad setting, missing file, unreachable hub) is a
``CourseError`` whose message says what was wrong and what to do next.
"""


class CourseError(Exception):
    """Base class for actionable errors raised by :mod:`helpers`."""


class SettingsError(CourseError, ValueError):
    """A profile or an environment override is invalid (notebook 00)."""


class ModelFilesError(CourseError, FileNotFoundError):
    """A model directory is missing files or holds a corrupted one (notebook 01)."""


class DownloadError(CourseError, RuntimeError):
    """A model could not be downloaded from the hub (notebook 01)."""


class ServerError(CourseError, RuntimeError):
    """A vLLM server could not be started, reached or stopped (notebook 03)."""


class BenchError(CourseError, RuntimeError):
    """A benchmark could not run or produced inconsistent numbers (notebook 04)."""


class BenchConfigError(CourseError, ValueError):
    """A benchmark was asked for something impossible, or its results file is damaged (notebook 04)."""


class GatewayError(CourseError, RuntimeError):
    """The API gateway was configured wrongly or could not be started (notebook 05)."""


class DeployError(CourseError, ValueError):
    """A deployment file (``.env``) or launcher request is wrong: names the variable and the fix."""


class StructuredOutputError(CourseError, ValueError):
    """A JSON schema (or another output constraint) given to a helper is itself wrong (notebook 07)."""


class ToolCallError(CourseError, ValueError):
    """A tool call cannot be run: unknown tool, arguments that are not JSON or break the schema,
    or the tool's function raised (notebook 07). The message is what the model is sent back."""
