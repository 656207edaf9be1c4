"""Dependencies: the heavy objects made in the lifespan, reached through ``app.state``."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import Depends, Request

from model.encoder import Encoder
from service.settings import Settings


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_encoder(request: Request) -> Encoder:
    encoder: Encoder = request.app.state.encoder
    return encoder


def get_inference_limiter(request: Request) -> anyio.CapacityLimiter:
    limiter: anyio.CapacityLimiter = request.app.state.inference_limiter
    return limiter


SettingsDep = Annotated[Settings, Depends(get_settings)]
EncoderDep = Annotated[Encoder, Depends(get_encoder)]
InferenceLimiterDep = Annotated[anyio.CapacityLimiter, Depends(get_inference_limiter)]
