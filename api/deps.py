"""Dependencies of the routes: the settings and the Redis store built by the lifespan."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from downloader.cluster import Registrar
from downloader.settings import Settings
from downloader.store import AsyncStore


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_store(request: Request) -> AsyncStore:
    db: AsyncStore = request.app.state.store
    return db


def get_registrar(request: Request) -> Registrar | None:
    registrar: Registrar | None = request.app.state.registrar
    return registrar


SettingsDep = Annotated[Settings, Depends(get_settings)]
RegistrarDep = Annotated[Registrar | None, Depends(get_registrar)]
StoreDep = Annotated[AsyncStore, Depends(get_store)]
