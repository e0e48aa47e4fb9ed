"""Value types that several event schemas share."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

# Active ISO 4217 currencies: "XXX" or a typo is refused, not stored as money.
ISO_4217 = frozenset(
    """AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BRL BSD BTN
    BWP BYN BZD CAD CDF CHF CLP CNY COP CRC CUP CVE CZK DJF DKK DOP DZD EGP ERN ETB EUR FJD
    FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF IDR ILS INR IQD IRR ISK JMD JOD JPY
    KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP
    MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR
    RON RSD RUB RWF SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS TMT
    TND TOP TRY TTD TWD TZS UAH UGX USD UYU UZS VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR
    ZMW ZWG """.split()  # noqa: SIM905 - a table reads better than 160 quoted codes
)


def _known_currency(code: str) -> str:
    if code not in ISO_4217:
        raise ValueError(f"{code!r} is not an ISO 4217 currency")
    return code


Currency = Annotated[
    str, Field(pattern=r"^[A-Z]{3}$", examples=["EUR"]), AfterValidator(_known_currency)
]
MinorUnits = Annotated[int, Field(ge=0, description="Integer minor units (cents); never floats")]


# An ISO week, "2026-W48": stores are settled by the week, Monday to Monday UTC.
WEEK_PATTERN = r"^[0-9]{4}-W[0-9]{2}$"


def money(amount: int, currency: str) -> str:
    """An amount in minor units as people read it: "12.50 EUR"."""
    return f"{amount / 100:.2f} {currency}"


# What a caller may name as one price, plan or remedy: 10^12 minor units, ten billion in
# a currency of cents (and still enough in one whose minor unit is worth little). A
# booking's sums of such amounts (20 lines of 20, three parts each) stay under 2^53, far
# inside the 64-bit integers MongoDB stores: a larger one answered 500, or broke every
# booking of an item priced near the limit.
MAX_AMOUNT = 10**12
Amount = Annotated[
    int, Field(ge=0, le=MAX_AMOUNT, description="Integer minor units (cents); never floats")
]
# What a caller may name as a whole sum (cash handed over, a refund): any booking's total.
MAX_SUM = 2**53
Sum = Annotated[
    int, Field(ge=0, le=MAX_SUM, description="Integer minor units (cents); never floats")
]


class GeoPoint(BaseModel):
    """A WGS84 point; stored in MongoDB as GeoJSON `[lon, lat]`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)

    def geojson(self) -> dict[str, object]:
        return {"type": "Point", "coordinates": [self.lon, self.lat]}

    def distance_m(self, other: GeoPoint) -> float:
        """Great-circle distance (haversine), metres."""
        p1, p2 = math.radians(self.lat), math.radians(other.lat)
        dp, dl = p2 - p1, math.radians(other.lon - self.lon)
        a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
        return 2 * EARTH_RADIUS_M * math.asin(math.sqrt(a))


EARTH_RADIUS_M = 6_371_008.8


class GeoPolygon(BaseModel):
    """A GeoJSON Polygon: rings of `[lon, lat]` positions, each closed."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["Polygon"]
    coordinates: list[list[tuple[float, float]]] = Field(min_length=1, max_length=20)

    @field_validator("coordinates")
    @classmethod
    def _rings(cls, rings: list[list[tuple[float, float]]]) -> list[list[tuple[float, float]]]:
        for ring in rings:
            if len(ring) < 4 or ring[0] != ring[-1]:
                raise ValueError("each ring needs at least 4 [lon, lat] points and must close")
            for lon, lat in ring:
                if not (-180 <= lon <= 180 and -90 <= lat <= 90):
                    raise ValueError(f"[{lon}, {lat}] is not a [lon, lat] position")
        return rings


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
