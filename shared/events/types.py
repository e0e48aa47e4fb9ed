"""Value types that several event schemas share."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", examples=["EUR"])]
MinorUnits = Annotated[int, Field(ge=0, description="Integer minor units (cents); never floats")]


class GeoPoint(BaseModel):
    """A WGS84 point; stored in MongoDB as GeoJSON `[lon, lat]`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)

    def geojson(self) -> dict[str, object]:
        return {"type": "Point", "coordinates": [self.lon, self.lat]}


class PricedLine(BaseModel):
    """One catalogue item on a booking, at the price in force when it was booked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    code: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    skill: str = Field(default="", max_length=64, description="Empty for products")
    kind: str = Field(default="service", pattern=r"^(service|product)$")
    quantity: int = Field(ge=1, le=100)
    unit_price: MinorUnits
    surcharge: MinorUnits = Field(
        default=0, description="Per unit: after-hours or urgent surcharge from the catalogue"
    )
    currency: Currency

    @property
    def amount(self) -> int:
        return (self.unit_price + self.surcharge) * self.quantity
