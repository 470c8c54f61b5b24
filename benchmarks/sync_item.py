"""The row schema of the sync benchmark's dataset, imported by the worker by its path.

Kept apart from the benchmark script so the worker imports only this, not the script's
servers and drivers, and its peak memory stays the sync's own.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from pydantic import BaseModel, Field


class SyncItem(BaseModel):
    id: str
    name: str = Field(min_length=1)
    price: Decimal = Field(ge=0)
    description: str
    category: str
    updated_at: datetime
