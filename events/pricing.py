"""List prices of object-store requests, in one table, chosen by BUCKETRUN_PRICING: what `status`, the dashboard
and the report turn request counts into dollars with. List prices only: no free tier, no negotiated rate.

Sources (read 2026-12-07; docs/cost.md): R2, https://developers.cloudflare.com/r2/pricing/ (Standard storage);
S3 Standard, https://aws.amazon.com/s3/pricing/ (US East, N. Virginia).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

from .errors import ConfigError

ENV = "BUCKETRUN_PRICING"
ENV_A, ENV_B = "BUCKETRUN_PRICE_A", "BUCKETRUN_PRICE_B"
# S3 by default: the one cloud path this repo deploys (template.yaml) makes an S3 bucket.
DEFAULT = "s3"


@dataclass(frozen=True)
class Prices:
    """Dollars per million requests of each class; deletes are free on both stores."""

    key: str
    name: str
    a_per_million: float
    b_per_million: float

    def usd(self, a: float, b: float) -> float:
        return (a * self.a_per_million + b * self.b_per_million) / 1e6

    def to_json(self) -> dict[str, object]:
        return {"key": self.key, "name": self.name, "a_per_million": self.a_per_million,
                "b_per_million": self.b_per_million}


TABLE = {
    "r2": Prices("r2", "R2", 4.50, 0.36),  # class A $4.50/M, class B $0.36/M
    "s3": Prices("s3", "S3 Standard", 5.00, 0.40),  # PUT/COPY/POST/LIST $0.005 per 1,000, GET $0.0004 per 1,000
}


def _price(env: dict[str, str], name: str) -> float:
    raw = env.get(name)
    if raw is None or not raw.strip():
        raise ConfigError(f"{ENV}=custom needs {name} (dollars per million requests), e.g. {name}=4.5")
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number of dollars per million requests") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"{name}={raw!r} must be a finite, non-negative number of dollars per million requests")
    return value


def prices(env: dict[str, str] | None = None) -> Prices:
    """The table's entry BUCKETRUN_PRICING names (r2, s3 or custom); ConfigError, one line, for anything else."""
    env = dict(os.environ) if env is None else env
    choice = (env.get(ENV) or DEFAULT).strip().lower()
    if choice in TABLE:
        return TABLE[choice]
    if choice == "custom":
        return Prices("custom", "custom", _price(env, ENV_A), _price(env, ENV_B))
    raise ConfigError(f"{ENV}={env.get(ENV)!r} is not one of r2, s3, custom")
