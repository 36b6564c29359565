"""Synthetic bidder events of one split with known truth, for readout and compaction tests.

``synthetic_split`` draws requests from users (each user keeps its arm, as the bidder's sticky
assignment does), segment features with a market price per segment, our bid aimed at each arm's
target win rate (jittered, so bids vary within a segment), the highest competing bid
``exp(mu + sigma·N(0,1))``, and a second-price auction: won = competing bid < our bid, clearing price =
the competing bid. The true win probability of each bid is ``Phi((ln bid - mu) / sigma)``, so
``truth[run_id]["win_rate"]`` (the mean of it over the arm's bids) is known exactly. Notices come
like an exchange's: win + billing for wins, loss for losses, clicks on some wins, some replayed.
``write_split_events`` writes the tables as event parts, one per kind and hour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from statistics import NormalDist

import numpy as np
import pyarrow as pa

from bidopt.events.schema import DECISIONS, NOTICES, rows_to_table
from bidopt.events.store import EventStore, hour_of

GEOS = ("california", "texas", "new york", "florida", "ohio")
DEVICES = ("mobile", "desktop", "tablet")
GEO_MU = {"california": 1.2, "texas": 0.6, "new york": 1.5, "florida": 0.8, "ohio": 0.3}
DEVICE_MU = {"mobile": 0.0, "desktop": 0.5, "tablet": -0.3}
SIGMA = 0.6


@dataclass(frozen=True)
class Arm:
    run_id: str
    traffic_pct: int
    win_rate: float  # the rate the arm's bids aim at
    ctr: float = 0.02


def _phi(x: np.ndarray) -> np.ndarray:
    return 0.5 * np.array([math.erfc(-v / math.sqrt(2)) for v in np.ravel(x)]).reshape(np.shape(x))


def synthetic_split(
    entity_code: str,
    split_id: int,
    arms: list[Arm],
    *,
    requests: int,
    start: datetime,
    duration: timedelta = timedelta(hours=1),
    seed: int = 0,
    users: int | None = None,
    no_bid_share: float = 0.05,
    test_share: float = 0.0,
    replay_share: float = 0.0,
    jitter: float = 0.25,
) -> tuple[pa.Table, pa.Table, dict]:
    """``(decisions, notices, truth)``; truth per run id: bids, wins, clicks, spend (currency),
    win_rate (the true expected win rate of its bids), ctr; plus ``test_requests`` and ``replays``."""
    rng = np.random.default_rng(seed)
    n_users = users or max(1, requests // 2)
    cuts = np.cumsum([a.traffic_pct for a in arms]) / 100.0
    user_arm = np.searchsorted(cuts, rng.random(n_users), side="right")
    user_of = rng.integers(0, n_users, requests)
    arm_of = user_arm[user_of]
    geo = rng.choice(len(GEOS), requests)
    device = rng.choice(len(DEVICES), requests)
    mu = np.array([GEO_MU[GEOS[g]] for g in geo]) + np.array([DEVICE_MU[DEVICES[d]] for d in device])
    aim = np.array([NormalDist().inv_cdf(arms[a].win_rate) for a in arm_of])
    bid_cpm = np.round(np.exp(mu + SIGMA * aim + jitter * rng.standard_normal(requests)), 4)
    p_win = _phi((np.log(bid_cpm) - mu) / SIGMA)
    market = np.exp(mu + SIGMA * rng.standard_normal(requests))
    is_bid = rng.random(requests) >= no_bid_share
    won = is_bid & (market < bid_cpm)
    clicked = won & (rng.random(requests) < np.array([arms[a].ctr for a in arm_of]))
    is_test = rng.random(requests) < test_share
    seconds = duration.total_seconds()
    times = [start + timedelta(seconds=float(s)) for s in np.sort(rng.random(requests) * seconds)]

    decisions, notices = [], []
    truth = {a.run_id: {"bids": 0, "wins": 0, "clicks": 0, "spend": 0.0, "p_sum": 0.0} for a in arms}
    replays = 0
    for i in range(requests):
        arm = arms[arm_of[i]]
        rid, t = f"req-{seed}-{i}", times[i]
        decisions.append(
            {
                "event_time": t,
                "entity_code": entity_code,
                "request_id": rid,
                "imp_id": "1",
                "split_id": split_id,
                "run_id": arm.run_id,
                "arm": int(arm_of[i]),
                "user_hash": f"u{user_of[i]}",
                "test": bool(is_test[i]),
                "bid": bool(is_bid[i]),
                "bid_cpm": float(bid_cpm[i]) if is_bid[i] else None,
                "no_bid_reason": None if is_bid[i] else "below floor",
                "segment_key": f"{GEOS[geo[i]]}|{DEVICES[device[i]]}",
                "level": "segment",
                "domain_multiplier": 1.0,
                "floor_cpm": None,
                "geo_region_name": GEOS[geo[i]],
                "os_code": "ios" if device[i] == 0 else "windows",
                "browser_code": "safari",
                "device_type": DEVICES[device[i]],
                "domain": f"site{i % 7}.com",
                "npi_matched": False,
                "replica_id": "synthetic",
            }
        )
        if not is_bid[i]:
            continue
        base = {
            "entity_code": entity_code,
            "request_id": rid,
            "imp_id": "1",
            "split_id": split_id,
            "run_id": arm.run_id,
            "bid_cpm": float(bid_cpm[i]),
            "bid_time": t,
            "test": bool(is_test[i]),
            "replica_id": "synthetic",
        }
        price = float(market[i])
        mine = []
        if won[i]:
            mine.append({**base, "kind": "win", "event_time": t + timedelta(seconds=0.2), "price_cpm": price})
            mine.append({**base, "kind": "billing", "event_time": t + timedelta(seconds=2), "price_cpm": price})
            if clicked[i]:
                mine.append({**base, "kind": "click", "event_time": t + timedelta(seconds=30)})
        else:
            mine.append({**base, "kind": "loss", "event_time": t + timedelta(seconds=0.2), "loss_reason": 102})
        notices.extend(mine)
        if replay_share and rng.random() < replay_share:
            notices.append({**mine[0], "event_time": mine[0]["event_time"] + timedelta(seconds=5)})
            replays += 1
        if is_test[i]:
            continue
        tr = truth[arm.run_id]
        tr["bids"] += 1
        tr["wins"] += int(won[i])
        tr["clicks"] += int(clicked[i])
        tr["spend"] += price / 1000.0 if won[i] else 0.0
        tr["p_sum"] += float(p_win[i])
    for tr in truth.values():
        tr["win_rate"] = tr.pop("p_sum") / tr["bids"] if tr["bids"] else None
    out_truth = {
        **truth,
        "test_requests": int(is_test.sum()),
        "replays": replays,
        "ctr": {a.run_id: a.ctr for a in arms},
    }
    return rows_to_table(DECISIONS, decisions), rows_to_table(NOTICES, notices), out_truth


def write_split_events(store: EventStore, entity_code: str, decisions: pa.Table, notices: pa.Table) -> int:
    """Write both tables as parts, one per kind and hour of ``event_time``; returns parts written."""
    written = 0
    for kind, table in ((DECISIONS, decisions), (NOTICES, notices)):
        hours = [hour_of(t) for t in table["event_time"].to_pylist()]
        for seq, hour in enumerate(sorted(set(hours))):
            mask = pa.array([h == hour for h in hours])
            store.write_part(kind, entity_code, hour, table.filter(mask), writer_id="synthetic", seq=seq)
            written += 1
    return written
