"""All configuration, from ``DAPSEARCH_*`` environment variables (or a ``.env`` file)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.artifact import Backend, default_model_dir


class Settings(BaseSettings):
    """One settings object for the CLI and the service."""

    model_config = SettingsConfigDict(env_prefix="DAPSEARCH_", env_file=".env", extra="ignore")

    home: Path = Field(default=Path("var"), description="Data directory: models, collections, job state.")
    model_dir: Path | None = Field(
        default=None, description="Built model directory; default <home>/models/multilingual-e5-small."
    )
    backend: Backend = Field(default="onnx-int8", description="Inference backend: onnx-int8, onnx or torch.")
    threads: int | None = Field(
        default=None, ge=1, description="Inference threads; default all usable cores."
    )
    batch_size: int = Field(default=32, ge=1, le=1024, description="Texts per forward pass.")
    host: str = Field(default="127.0.0.1", description="Address `dapsearch serve` binds.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port `dapsearch serve` binds.")
    max_texts: int = Field(default=256, ge=1, description="Most texts accepted in one /embed request.")
    max_text_chars: int = Field(
        default=20_000, ge=1, description="Longest single text accepted, in characters."
    )

    @property
    def collections_dir(self) -> Path:
        return self.home / "collections"

    @property
    def resolved_model_dir(self) -> Path:
        return self.model_dir if self.model_dir is not None else default_model_dir(self.home)
