"""A search parameter's range, as the spec writes it (``{low, high, log, type}``) and checks it.
``search.distribution`` turns one into scipy's distribution, ``tune.tpe`` into Optuna's. Pure."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator


class Range(BaseModel):
    """A parameter's range: ``{low: 0.01, high: 0.3, log: true}``, ``{low: 50, high: 500, type:
    int}``. Both ends are included. ``type`` defaults to int when both ends are whole numbers
    written without a point, float otherwise; ``log`` samples evenly on a log scale."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: int | float
    high: int | float
    log: bool = False
    type: Literal["int", "float"] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low})")
        whole = float(self.low).is_integer() and float(self.high).is_integer()
        if self.kind == "int" and not whole:
            raise ValueError(f"an int range needs whole ends (got {self.low}, {self.high})")
        return self

    @property
    def kind(self) -> str:
        if self.type is not None:
            return self.type
        whole = all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high))
        return "int" if whole else "float"

    @property
    def ends(self) -> list[int | float]:
        """Both ends, as the estimator gets them (checked before anything runs)."""
        cast = int if self.kind == "int" else float
        return [cast(self.low), cast(self.high)]


def parse_range(name: str, value: dict[str, Any]) -> Range:
    try:
        return Range.model_validate(value)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        problem = error["msg"].removeprefix("Value error, ")
        raise ValueError(
            f"search.params.{name}{'.' + where if where else ''}: {problem} (a range is "
            "{low: L, high: H}, with log: true and type: int or float if needed)"
        ) from None
