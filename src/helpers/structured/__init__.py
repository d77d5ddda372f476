"""Structured outputs and tool calling (notebook 07).

- :mod:`.validity`: does each output parse, and fit its schema? Counted over a batch.
- :mod:`.offline`: the same prompts with and without a constraint, timed, on an offline ``LLM``.
- :mod:`.tools`: a tool defined once (schema + Python function), its calls checked and run,
  and the request / tool result / request loop.
- :mod:`.tool_server`: the server flags that turn tool calling on for the profile's model.
"""

from .offline import BatchRun, compare_constraints, constraint_table, plot_constraints
from .tool_server import TOOL_CALL_PARSER, template_is_chatml, template_renders_tools, tool_server_args
from .tools import Tool, ToolLoopResult, ToolStep, execute_tool_call, run_tool_loop
from .validity import OutputCheck, ValidityReport, check_output, validity_report, validity_table

__all__ = [
    "BatchRun", "compare_constraints", "constraint_table", "plot_constraints",
    "TOOL_CALL_PARSER", "template_is_chatml", "template_renders_tools", "tool_server_args",
    "Tool", "ToolLoopResult", "ToolStep", "execute_tool_call", "run_tool_loop",
    "OutputCheck", "ValidityReport", "check_output", "validity_report", "validity_table",
]
