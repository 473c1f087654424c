"""Errors the app reports in one paragraph (no MLflow import, so the entry point stays light)."""

from __future__ import annotations


class StoreUnavailable(Exception):
    """The tracking store cannot be written: gone, full, read-only, or locked for too long."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(f"the MLflow store {uri} cannot be written: {reason}")
        self.uri, self.reason = uri, reason
