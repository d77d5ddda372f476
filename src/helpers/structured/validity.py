"""Does an output parse as JSON and fit its schema? One output, or counted over a batch (notebook 07).

::

    report = validity_report("constrained", texts, schema, finish_reasons)
    print(validity_table([free, report]))   # valid / not JSON / breaks schema / cut off, per row

An output that stopped at ``max_tokens`` (``finish_reason == "length"``) and does not parse is
counted as *cut off*, not as *not JSON*: a grammar keeps every prefix valid, but it cannot
finish an object the token budget ran out on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import jsonschema

from ..errors import StructuredOutputError

VALID, NOT_JSON, BREAKS_SCHEMA, CUT_OFF = "valid", "not JSON", "breaks schema", "cut off"
REASONS = (VALID, NOT_JSON, BREAKS_SCHEMA, CUT_OFF)


def schema_validator(schema: Mapping[str, Any]) -> jsonschema.protocols.Validator:
    """A validator for ``schema`` (JSON Schema 2020-12 unless it says otherwise).

    A schema that is itself invalid raises :class:`StructuredOutputError` naming the problem.
    """
    if not isinstance(schema, Mapping):
        raise StructuredOutputError(
            f"A JSON schema is a dict, got {type(schema).__name__}. For a Pydantic model pass "
            "Model.model_json_schema().")
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as error:
        raise StructuredOutputError(
            f"The JSON schema itself is invalid at {_where(error, 'the top level')}: {error.message}. Fix the schema "
            "(vLLM's server would answer 400 to it as well).") from None
    return cls(schema)


def _reject_constant(name: str) -> None:
    """``NaN`` and ``Infinity`` are Python's extensions, not JSON: another program refuses them."""
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


def _where(error: jsonschema.ValidationError, top: str = "top level") -> str:
    return "/".join(str(p) for p in error.path) or top


def schema_violation(validator: jsonschema.protocols.Validator, value: Any) -> str | None:
    """``"<path>: <what is wrong>"`` for the most relevant error of ``value``, or ``None`` if it fits."""
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    return None if error is None else f"{_where(error)}: {error.message}"


@dataclass(frozen=True)
class OutputCheck:
    """The verdict on one output: ``reason`` is one of ``REASONS``; ``detail`` says why."""

    reason: str
    detail: str = ""
    value: Any = None

    @property
    def ok(self) -> bool:
        return self.reason == VALID


def check_output(text: str, schema: Mapping[str, Any] | None = None, finish_reason: str | None = None,
                 *, validator: jsonschema.protocols.Validator | None = None) -> OutputCheck:
    """Parse ``text`` as one JSON value and validate it against ``schema`` (if given)."""
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        reason = CUT_OFF if finish_reason == "length" else NOT_JSON
        return OutputCheck(reason, f"{error.msg} at character {error.pos}")
    validator = validator or (schema_validator(schema) if schema is not None else None)
    if validator is not None:
        violation = schema_violation(validator, value)
        if violation is not None:
            return OutputCheck(BREAKS_SCHEMA, violation, value)
    return OutputCheck(VALID, "", value)


@dataclass
class ValidityReport:
    """Counts of each verdict over a batch, with the first failing output of each kind."""

    label: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    examples: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def valid(self) -> int:
        return self.counts[VALID]

    @property
    def rate(self) -> float:
        return self.valid / self.total if self.total else 0.0

    def add(self, text: str, check: OutputCheck) -> None:
        self.counts[check.reason] += 1
        if not check.ok:
            self.examples.setdefault(check.reason, (text, check.detail))


def validity_report(label: str, texts: Sequence[str], schema: Mapping[str, Any] | None = None,
                    finish_reasons: Sequence[str | None] | None = None) -> ValidityReport:
    """Check every text against ``schema``; ``finish_reasons`` (same order) tells cut-off ones apart."""
    if finish_reasons is not None and len(finish_reasons) != len(texts):
        raise StructuredOutputError(
            f"{len(texts)} texts but {len(finish_reasons)} finish reasons: pass one per output, "
            "in the same order.")
    validator = schema_validator(schema) if schema is not None else None
    report = ValidityReport(label)
    for i, text in enumerate(texts):
        reason = finish_reasons[i] if finish_reasons is not None else None
        report.add(text, check_output(text, finish_reason=reason, validator=validator))
    return report


def validity_table(reports: Sequence[ValidityReport]) -> str:
    """A text table: one row per report, a column per verdict, and the valid rate."""
    width = max([len(r.label) for r in reports] + [10])
    header = f"{'':<{width}}  " + "  ".join(f"{name:>13}" for name in REASONS) + "   valid rate"
    rows = [header]
    for r in reports:
        cells = "  ".join(f"{r.counts[name]:>13}" for name in REASONS)
        rows.append(f"{r.label:<{width}}  {cells}   {r.valid}/{r.total} = {r.rate:.0%}")
    return "\n".join(rows)
