"""The server's settings, validated once at the entry point and passed down as one object.

Worker processes receive it as JSON in ``MLPIPE_SERVE_CONFIG`` (uvicorn starts them fresh), so
everything here is plain data. The bearer token is a SecretStr: it never shows in logs, reprs or
``/model``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from mlpipe.errors import SpecError

CONFIG_ENV = "MLPIPE_SERVE_CONFIG"
TOKEN_ENV = "MLPIPE_SERVE_TOKEN"


class ServeConfig(BaseModel):
    """What ``mlpipe serve`` was asked to do."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_uri: str
    tracking_uri: str
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    poll_seconds: float = Field(10.0, gt=0, description="registry poll interval (alias URIs)")
    token: SecretStr | None = None
    max_body_bytes: int = Field(1_048_576, ge=64)
    max_rows: int = Field(10_000, ge=1)
    access_log: bool = True
    allow_pickle: bool = False
    onnx: bool = True
    drain_seconds: float = Field(0.0, ge=0, description="keep serving after SIGTERM, /ready 503")
    graceful_timeout_seconds: float = Field(30.0, gt=0)
    drift_window: int | None = Field(None, ge=10, description="rows; None: the profile's")
    drift_seconds: float = Field(15.0, gt=0, description="how often the window is checked")
    drift_events: bool = Field(False, description="emit mlpipe.drift.detected to Prefect")

    def to_env(self) -> dict[str, str]:
        """The environment a worker process needs to rebuild this config."""
        env = {CONFIG_ENV: self.model_dump_json(exclude={"token"})}
        if self.token is not None:
            env[TOKEN_ENV] = self.token.get_secret_value()
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ServeConfig:
        """Rebuild the config in a worker process (see ``to_env``)."""
        raw = environ.get(CONFIG_ENV)
        if raw is None:
            raise SpecError(f"{CONFIG_ENV} is not set; start the server with `mlpipe serve`")
        config = cls.model_validate_json(raw)
        token = environ.get(TOKEN_ENV)
        return config.model_copy(update={"token": SecretStr(token)}) if token else config


def build_config(**values: object) -> ServeConfig:
    """A validated config; one line per bad value, as for the pipeline spec."""
    try:
        return ServeConfig.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        lines = [
            f"  --{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']} "
            f"(got {e.get('input')!r})"
            for e in exc.errors()
        ]
        raise SpecError("invalid serve options:\n" + "\n".join(lines)) from None
