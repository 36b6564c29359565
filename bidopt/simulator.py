"""A market simulator with known ground truth (pure NumPy / Arrow, no Ray).

Every request has a cell of features (geo, device, os, browser, domain, NPI
match). The highest competing bid of a request is log-normal,
``ln(market) ~ N(mu, sigma)``, where ``mu`` adds up the cell's feature effects
(geo, device and os move prices a lot, the browser barely, each domain has its
own effect and domains follow a Zipf popularity, an NPI match raises
competition) and ``sigma`` depends on the device. So for any request:

* the true win probability of a bid ``b`` is ``Phi((ln b - mu) / sigma)``, times
  ``[b >= floor]`` when the exchange sent a floor (``true_win_probability``);
* the oracle bid of a target win rate over a set of requests is the ``b`` whose
  mean true win probability is the target (``oracle_bid``);
* the true CTR of a won impression is a logistic function of the cell.

The logging policy (the bids in the logs) is a noisy guess of each request's
market price, ``ln b = mu + bias(geo) + N(0, 0.45)``, so bids vary within every
segment and a win curve can be learnt. First-price auctions charge the bid;
second-price auctions charge ``max(market, floor)``. With ``floor_available``
three requests in four carry a floor, and the policy lifts a share of its bids
below the floor to just over it (``floor_lift_share``, 60%).

``sample_requests`` draws fresh requests of the same market (cells, floors, truth, users)
without bids or outcomes, for the exchange simulator (``bidopt.exchange``) to send to a bidder.

The generated table has the bid-log contract's columns plus ``truth_mu``,
``truth_sigma`` and ``truth_ctr`` (which warehouses drop on load). Generation is
chunked (each chunk a slice of the time window, its own child seed), seeded and
reproducible: the same spec gives the same rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.special import ndtr, ndtri

from bidopt.errors import InvalidConfig

GEOS = (
    "california",
    "texas",
    "florida",
    "new york",
    "pennsylvania",
    "illinois",
    "ohio",
    "georgia",
    "north carolina",
    "michigan",
    "new jersey",
    "virginia",
    "washington",
    "arizona",
    "massachusetts",
    "tennessee",
    "indiana",
    "maryland",
    "missouri",
    "wisconsin",
    "colorado",
    "minnesota",
    "south carolina",
    "alabama",
    "louisiana",
    "kentucky",
    "oregon",
    "oklahoma",
    "connecticut",
    "utah",
)

# (device, os, browser) -> share of traffic; the joint table keeps the combinations realistic.
_DEVICE_SHARE = {"mobile": 0.55, "desktop": 0.30, "tablet": 0.10, "ctv": 0.05}
_OS_GIVEN_DEVICE = {
    "mobile": {"ios": 0.45, "android": 0.55},
    "desktop": {"windows": 0.70, "macos": 0.25, "linux": 0.05},
    "tablet": {"ios": 0.60, "android": 0.40},
    "ctv": {"other": 1.0},
}
_BROWSER_GIVEN_OS = {
    "ios": {"safari": 0.80, "chrome": 0.20},
    "android": {"chrome": 0.75, "samsung": 0.20, "firefox": 0.05},
    "windows": {"chrome": 0.65, "edge": 0.25, "firefox": 0.10},
    "macos": {"safari": 0.50, "chrome": 0.45, "firefox": 0.05},
    "linux": {"chrome": 0.60, "firefox": 0.40},
    "other": {"other": 1.0},
}
_DEVICE_EFFECT = {"mobile": -0.25, "desktop": 0.15, "tablet": 0.0, "ctv": 0.55}
_DEVICE_SIGMA = {"mobile": 0.55, "desktop": 0.45, "tablet": 0.50, "ctv": 0.35}
_OS_EFFECT = {"ios": 0.20, "android": -0.10, "windows": 0.0, "macos": 0.15, "linux": -0.20, "other": 0.0}
_DEVICE_CTR = {"mobile": 0.25, "desktop": -0.15, "tablet": 0.10, "ctv": -1.0}

AUCTION_TYPES = ("first_price", "second_price")


@dataclass(frozen=True)
class MarketSpec:
    entity_code: str
    rows: int = 1_000_000
    days: int = 28
    end_time: datetime = datetime(2026, 1, 31)
    seed: int = 7
    auction_type: str = "first_price"
    floor_available: bool = False
    npi_enabled: bool = False
    n_domains: int = 2000
    base_cpm: float = 2.0
    chunk_rows: int = 2_000_000
    # the share of the policy's bids below a floor that it raises to just over the floor (as DSPs do);
    # 0 leaves every bid where the policy drew it. The draws are the same whatever the share, so two
    # markets that differ only in it differ only in the lifted bids (and what they won).
    floor_lift_share: float = 0.6

    def __post_init__(self) -> None:
        if self.rows < 1:
            raise InvalidConfig(f"rows must be >= 1, got {self.rows}")
        if self.days < 1:
            raise InvalidConfig(f"days must be >= 1, got {self.days}")
        if self.auction_type not in AUCTION_TYPES:
            raise InvalidConfig(f"auction_type must be one of {', '.join(AUCTION_TYPES)}")
        if self.n_domains < 1 or self.base_cpm <= 0 or self.chunk_rows < 1:
            raise InvalidConfig("n_domains, base_cpm and chunk_rows must be positive")
        if not 0.0 <= self.floor_lift_share <= 1.0:
            raise InvalidConfig(f"floor_lift_share must be within [0, 1], got {self.floor_lift_share}")

    @property
    def start_time(self) -> datetime:
        return self.end_time - timedelta(days=self.days)


@dataclass(frozen=True)
class _Market:
    """The cell-level parameters, fixed by the spec's seed (the same for every chunk)."""

    combos: list[tuple[str, str, str]]
    combo_p: np.ndarray
    combo_mu: np.ndarray
    combo_sigma: np.ndarray
    combo_ctr: np.ndarray
    geo_p: np.ndarray
    geo_mu: np.ndarray
    geo_ctr: np.ndarray
    geo_policy_bias: np.ndarray
    domains: list[str]
    domain_p: np.ndarray
    domain_mu: np.ndarray
    domain_ctr: np.ndarray


def _build_market(spec: MarketSpec) -> _Market:
    rng = np.random.default_rng([spec.seed, 0])
    combos, p, mu, sigma, ctr = [], [], [], [], []
    browser_effect = {b: rng.normal(0, 0.05) for b in ("safari", "chrome", "samsung", "firefox", "edge", "other")}
    for device, dp in _DEVICE_SHARE.items():
        for os_code, op in _OS_GIVEN_DEVICE[device].items():
            for browser, bp in _BROWSER_GIVEN_OS[os_code].items():
                combos.append((device, os_code, browser))
                p.append(dp * op * bp)
                mu.append(_DEVICE_EFFECT[device] + _OS_EFFECT[os_code] + browser_effect[browser])
                sigma.append(_DEVICE_SIGMA[device])
                ctr.append(_DEVICE_CTR[device])
    geo_rank = np.arange(1, len(GEOS) + 1)
    geo_p = geo_rank**-0.8
    dom_rank = np.arange(1, spec.n_domains + 1)
    domain_p = dom_rank**-1.1  # long-tailed popularity
    return _Market(
        combos=combos,
        combo_p=np.array(p) / sum(p),
        combo_mu=np.array(mu),
        combo_sigma=np.array(sigma),
        combo_ctr=np.array(ctr),
        geo_p=geo_p / geo_p.sum(),
        geo_mu=rng.normal(0, 0.35, len(GEOS)),
        geo_ctr=rng.normal(0, 0.25, len(GEOS)),
        geo_policy_bias=rng.normal(0.1, 0.25, len(GEOS)),
        domains=[f"pub{r:05d}.com" for r in dom_rank],
        domain_p=domain_p / domain_p.sum(),
        domain_mu=rng.normal(0, 0.35, spec.n_domains),
        domain_ctr=rng.normal(0, 0.5, spec.n_domains),
    )


def iter_market_chunks(spec: MarketSpec) -> Iterator[pa.Table]:
    """The spec's rows as Arrow tables of at most ``chunk_rows`` rows, in time order."""
    market = _build_market(spec)
    n_chunks = -(-spec.rows // spec.chunk_rows)
    window = (spec.end_time - spec.start_time).total_seconds()
    for k in range(n_chunks):
        n = min(spec.chunk_rows, spec.rows - k * spec.chunk_rows)
        lo, hi = window * k / n_chunks, window * (k + 1) / n_chunks
        yield _chunk(spec, market, np.random.default_rng([spec.seed, 1, k]), n, lo, hi, k)


def simulate_market(spec: MarketSpec) -> pa.Table:
    """All of the spec's rows as one table (contract columns + ``truth_*``)."""
    return pa.concat_tables(list(iter_market_chunks(spec)))


def _dict_column(indices: np.ndarray, values: list[str]) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(indices.astype(np.int32)), pa.array(values))


@dataclass(frozen=True)
class _Cells:
    """Each request's cell (indices into the market's tables) and its market's ``ln N(mu, sigma)``."""

    combo: np.ndarray
    geo: np.ndarray
    dom: np.ndarray
    npi: np.ndarray
    mu: np.ndarray
    sigma: np.ndarray


def _draw_cells(spec: MarketSpec, m: _Market, rng: np.random.Generator, n: int) -> _Cells:
    combo = rng.choice(len(m.combos), size=n, p=m.combo_p)
    geo = rng.choice(len(GEOS), size=n, p=m.geo_p)
    dom = rng.choice(len(m.domains), size=n, p=m.domain_p)
    npi = rng.random(n) < 0.15 if spec.npi_enabled else np.zeros(n, dtype=bool)
    mu = np.log(spec.base_cpm) + m.combo_mu[combo] + m.geo_mu[geo] + m.domain_mu[dom] + 0.45 * npi
    sigma = m.combo_sigma[combo] * np.exp(0.1 * m.geo_mu[geo])
    return _Cells(combo, geo, dom, npi, mu, sigma)


def _draw_floors(spec: MarketSpec, rng: np.random.Generator, mu: np.ndarray) -> np.ndarray:
    """Floors in CPM with 2 decimals, NaN where the exchange sent none (every request without floors)."""
    floor = np.full(len(mu), np.nan)
    if spec.floor_available:
        has_floor = rng.random(len(mu)) < 0.75
        floor[has_floor] = np.round(np.exp(mu[has_floor] - 0.5 + 0.35 * rng.standard_normal(has_floor.sum())), 2)
    return floor


def _true_ctr(m: _Market, c: _Cells) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(-5.8 + m.combo_ctr[c.combo] + m.geo_ctr[c.geo] + m.domain_ctr[c.dom] + 0.9 * c.npi)))


def _feature_columns(m: _Market, c: _Cells) -> dict[str, pa.Array]:
    """The contract's segment feature columns of the cells (dictionary-encoded)."""

    def part(i: int) -> pa.Array:  # the i-th element of each request's (device, os, browser)
        values = sorted({combo[i] for combo in m.combos})
        index_of_combo = np.array([values.index(combo[i]) for combo in m.combos])
        return _dict_column(index_of_combo[c.combo], values)

    return {
        "geo_region_name": _dict_column(c.geo, list(GEOS)),
        "os_code": part(1),
        "browser_code": part(2),
        "device_type": part(0),
        "domain": _dict_column(c.dom, m.domains),
        "npi_matched": pa.array(c.npi),
    }


def _chunk(
    spec: MarketSpec, m: _Market, rng: np.random.Generator, n: int, t_lo: float, t_hi: float, chunk_no: int
) -> pa.Table:
    cells = _draw_cells(spec, m, rng, n)
    mu, sigma = cells.mu, cells.sigma
    market = np.exp(mu + sigma * rng.standard_normal(n))
    floor = _draw_floors(spec, rng, mu)

    bid = np.exp(mu + m.geo_policy_bias[cells.geo] + 0.45 * rng.standard_normal(n))
    below_floor = ~np.isnan(floor) & (bid < floor)
    lift = below_floor & (rng.random(n) < spec.floor_lift_share)
    bid[lift] = floor[lift] * 1.01
    bid = np.round(np.clip(bid, 0.05, 200.0), 4)

    clears_floor = np.isnan(floor) | (bid >= floor)
    won = (bid > market) & clears_floor
    if spec.auction_type == "first_price":
        price = bid
    else:
        price = np.round(np.fmax(market, np.nan_to_num(floor, nan=0.0)), 4)
    clearing = np.where(won, price, np.nan)

    ctr = _true_ctr(m, cells)
    clicked = won & (rng.random(n) < ctr)

    seconds = np.sort(rng.uniform(t_lo, t_hi, n))
    start_us = (
        int(spec.start_time.timestamp() * 1_000_000)
        if spec.start_time.tzinfo
        else int((spec.start_time - datetime(1970, 1, 1)).total_seconds() * 1_000_000)
    )
    times = pa.array(start_us + (seconds * 1_000_000).astype(np.int64), pa.timestamp("us"))
    seq = pa.array(np.arange(n, dtype=np.int64) + chunk_no * spec.chunk_rows).cast(pa.string())
    request_id = pc.binary_join_element_wise(f"{spec.entity_code}-{spec.seed}", seq, "-")
    users = rng.zipf(1.3, n) % max(n // 10, 1)
    user_id = pc.binary_join_element_wise("u", pa.array(users).cast(pa.string()), "")

    return pa.table(
        {
            "event_time": times,
            "entity_code": pa.array(np.full(n, spec.entity_code, dtype=object), pa.string()),
            "request_id": request_id,
            "user_id": user_id,
            **_feature_columns(m, cells),
            "floor_cpm": pa.array(floor, pa.float64(), from_pandas=True),
            "bid_cpm": pa.array(bid),
            "won": pa.array(won),
            "clearing_price_cpm": pa.array(clearing, pa.float64(), from_pandas=True),
            "clicked": pa.array(clicked),
            "truth_mu": pa.array(mu),
            "truth_sigma": pa.array(sigma),
            "truth_ctr": pa.array(ctr),
        }
    )


def sample_requests(spec: MarketSpec, n: int, *, seed: int = 0, users: int | None = None) -> pa.Table:
    """``n`` fresh requests of the spec's market (the same cells, prices and CTRs as its logs: the
    market is fixed by ``spec.seed``), with their truth but no bid or outcome, for an exchange
    to send to a bidder.

    Columns: ``user_id`` (one of ``users`` simulated users, uniformly drawn, default ``n // 4``
    and at least 1, so a user comes back and keeps its A/B arm), the contract's segment features
    (``geo_region_name``, ``os_code``, ``browser_code``, ``device_type``, ``domain``,
    ``npi_matched``), ``floor_cpm`` (null: no floor), ``truth_mu`` and ``truth_sigma`` (the
    highest competing bid is ``exp(mu + sigma * N(0, 1))``; it is left to the caller to draw)
    and ``truth_ctr``. ``seed`` picks the traffic: the same spec and seed give the same rows."""
    if n < 1:
        raise InvalidConfig(f"n must be >= 1, got {n}")
    users = max(n // 4, 1) if users is None else users
    if users < 1:
        raise InvalidConfig(f"users must be >= 1, got {users}")
    market = _build_market(spec)
    rng = np.random.default_rng([spec.seed, 2, seed])
    cells = _draw_cells(spec, market, rng, n)
    floor = _draw_floors(spec, rng, cells.mu)
    user_id = pc.binary_join_element_wise("u", pa.array(rng.integers(0, users, n)).cast(pa.string()), "")
    return pa.table(
        {
            "user_id": user_id,
            **_feature_columns(market, cells),
            "floor_cpm": pa.array(floor, pa.float64(), from_pandas=True),
            "truth_mu": pa.array(cells.mu),
            "truth_sigma": pa.array(cells.sigma),
            "truth_ctr": pa.array(_true_ctr(market, cells)),
        }
    )


def true_win_probability(bid, mu, sigma, floor=None):
    """P(win) of ``bid`` against requests with market ``ln N(mu, sigma)`` and optional floors (NaN = none)."""
    bid = np.asarray(bid, dtype=float)
    p = ndtr((np.log(np.maximum(bid, 1e-12)) - mu) / sigma)
    if floor is not None:
        floor = np.asarray(floor, dtype=float)
        p = np.where(np.isnan(floor) | (bid >= floor), p, 0.0)
    return p


def oracle_bid(target: float, mu, sigma, floor=None, *, lo: float = 1e-3, hi: float = 1e4) -> float:
    """The lowest bid whose mean true win probability over the given requests reaches ``target``.

    ``inf`` when no bid up to ``hi`` reaches it (floors can cap the reachable rate below 1).
    """
    mu, sigma = np.asarray(mu, dtype=float), np.asarray(sigma, dtype=float)
    if not 0 < target < 1:
        raise InvalidConfig(f"target must be in (0, 1), got {target}")
    if len(mu) == 1 and floor is None:
        return float(np.exp(mu[0] + sigma[0] * ndtri(target)))
    if true_win_probability(hi, mu, sigma, floor).mean() < target:
        return float("inf")
    a, b = np.log(lo), np.log(hi)
    for _ in range(60):  # bisection in log space: 60 halvings of ~16 units is far below a cent
        mid = (a + b) / 2
        if true_win_probability(np.exp(mid), mu, sigma, floor).mean() >= target:
            b = mid
        else:
            a = mid
    return float(np.exp(b))
