"""Floor-aware win curves: P(win | request, bid) = P(the bid clears the floor) x P(win | it cleared).

A bid below the impression's floor cannot win, and a logging policy that lifts most of those bids to
just over the floor (as DSPs do, and market B of the simulator does) leaves the requests whose floor
is above a price *b* under-represented among the logged bids near *b*: a win curve learnt from
won/lost at *b* is then too high exactly where floors block (measured on market B: +0.028 predicted
over true at the suggested bids, growing with the floor band; README, "Bid quality at every target").

So on entities with floors the win model learns the market only from the bids that cleared their
floor (``cleared_bids`` of the warehouse aggregates), and each model cell's curve is multiplied by
the share of the cell's training requests whose floor the bid clears. The floors a request carries
do not depend on what was bid, so that share is read from the logged floors of every request, through
a histogram per cell in ln(floor) (``BidLogWarehouse.floor_histogram``), uniform inside each bin.

The product is applied to the cells' curves at the model's knots (``CellCurves``), so the bid
search, the bid table's predicted rates, the plots and the domain multipliers all price
rate(b) = sum over cells of w x P(floor <= b) x P(win | cleared, b), interpolated between knots as
the curves are. ``FLOOR_BINS`` bins over the run's bid range make a bin ln(max/min)/256 wide in
ln(bid): 2.2% of the bid with the default bounds (0.10 to 25 CPM).

Two approximations, both inside a knot gap: inside a bin the floors count as spread evenly (a floor of
exactly 1.00, common on real exchanges, clears part of the bids in its bin below 1.00), and the share
is interpolated between the model's knots like the curve (the floors' own steps are not among the
knots). The segment's median floor, below which no bid goes with ``floor_available``, covers the
case that matters most: a segment whose requests share one round floor.

The histogram needs every request's floor, those above the logging run's price included. Imported
logs of every bid (as the simulator's and iPinYou's) carry them; so do the platform's own rows
(``traffic_source = platform``): compaction writes each floor no-bid as a bid lost to its floor at
the price the run would have bid (``bidopt.events.compact``). Rows compacted from events written
before that (no ``unfloored_cpm``) hold only the bids placed, each of which cleared its floor: the
histogram then sees only the floors those bids cleared, and the share above their prices is too high.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bidopt.optimizer.models import OTHER, CellCurves

FLOOR_BINS = 256  # bins of ln(floor) between the run's lowest and highest bid
CHUNK_CELLS = 4096  # cells whose (cells x bins) histogram is held at once: three tables of ~8.5 MB


@dataclass(frozen=True)
class FloorBins:
    """``FLOOR_BINS`` equal bins of ln(floor) from ``lowest_cpm`` to ``highest_cpm`` (a floor at or
    above the highest is bin ``FLOOR_BINS``, counted as cleared by no bid of the run)."""

    lowest_cpm: float
    highest_cpm: float

    @property
    def width(self) -> float:
        return float(np.log(self.highest_cpm / self.lowest_cpm)) / FLOOR_BINS

    def position(self, log_bids: np.ndarray) -> np.ndarray:
        """Where each ln(bid) falls, in bins from the lowest bid (bin i spans [i, i + 1))."""
        return (np.asarray(log_bids, dtype=np.float64) - np.log(self.lowest_cpm)) / self.width


def cell_histograms(
    histogram: pd.DataFrame, cells: pd.DataFrame, columns: Sequence[str], *, domain_keep: set[str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``histogram`` (``BidLogWarehouse.floor_histogram`` over ``columns``, as pandas) lined up with
    ``cells`` (rows with ``columns``): per histogram entry the cell's position and the bin (-1: no floor
    or one below the lowest bid, which every bid clears; ``FLOOR_BINS``: at or above the highest, which
    none does), its rows, and per cell the rows in all. ``domain_keep``: the domains with a category of
    their own in the model (the rest are ``(other)``, as in the cells). Entries of no cell are dropped;
    a cell with no entry (no rows in the histogram's window) has 0 rows, and counts as always cleared."""
    columns = list(columns)
    cells = cells.reset_index(drop=True)
    hist = histogram.copy()
    if domain_keep is not None and "domain" in columns:
        hist["domain"] = np.where(hist["domain"].isin(domain_keep), hist["domain"], OTHER)
    bins = hist["floor_bin"].astype("Float64").fillna(-1).astype(np.int64).to_numpy()
    hist["bin"] = np.clip(bins, -1, FLOOR_BINS)
    hist = hist.groupby([*columns, "bin"], as_index=False, observed=True)["n"].sum()
    index = pd.MultiIndex.from_frame(cells[columns].astype(str)) if columns else None
    if columns:
        where = index.get_indexer(pd.MultiIndex.from_frame(hist[columns].astype(str)))
    else:
        where = np.zeros(len(hist), dtype=np.int64)
    found = where >= 0
    cell, bin_, n = where[found], hist["bin"].to_numpy()[found], hist["n"].to_numpy(float)[found]
    totals = np.bincount(cell, n, len(cells))
    return cell, bin_, n, totals


@dataclass(frozen=True)
class FloorShares:
    """Each cell's floor histogram kept sparse (one entry per cell and bin that has rows): the share of
    the cell's requests whose floor a bid clears, at any bid (``at``), for the curve beyond the model's
    knots, where the knot table says nothing about the floors between the bid and the outer knot."""

    bins: FloorBins
    keys: np.ndarray  # sorted: cell * (FLOOR_BINS + 2) + bin + 1
    counts: np.ndarray  # rows of each entry
    before: np.ndarray  # rows of the entries before each one (all cells)
    cell_before: np.ndarray  # rows of the entries before each cell's first
    totals: np.ndarray  # rows per cell

    @classmethod
    def of(cls, cell: np.ndarray, bin_: np.ndarray, n: np.ndarray, totals: np.ndarray, bins: FloorBins):
        stride = FLOOR_BINS + 2
        keys = cell.astype(np.int64) * stride + bin_.astype(np.int64) + 1
        order = np.argsort(keys, kind="stable")
        keys, counts = keys[order], np.asarray(n, dtype=np.float64)[order]
        before = np.cumsum(counts) - counts
        starts = np.searchsorted(keys, np.arange(len(totals), dtype=np.int64) * stride)
        running = np.r_[before, before[-1] + counts[-1]] if len(counts) else np.zeros(1)
        return cls(bins, keys, counts, before, running[starts], np.asarray(totals, dtype=np.float64))

    def at(self, cells: np.ndarray, log_bids: np.ndarray) -> np.ndarray:
        """The share of cell ``cells[i]``'s requests whose floor a bid of ``exp(log_bids[i])`` clears
        (1 for a cell without rows): what ``apply_clearing_shares`` reads at the knots."""
        cells = np.asarray(cells, dtype=np.int64)
        u = self.bins.position(log_bids)
        j = np.clip(np.floor(u), -1, FLOOR_BINS).astype(np.int64)
        frac = np.where((j >= 0) & (j < FLOOR_BINS), u - j, 0.0)
        n = len(self.keys)
        if n == 0:  # no cell has a row
            return np.ones(len(cells))
        q = cells * (FLOOR_BINS + 2) + j + 1
        idx = np.searchsorted(self.keys, q, side="left")  # the first entry at or after (cell, bin j)
        safe = np.minimum(idx, n - 1)
        own = np.where((idx < n) & (self.keys[safe] == q), self.counts[safe], 0.0)  # bin j's rows
        rows_before = np.where(idx < n, self.before[safe], self.before[-1] + self.counts[-1])
        below = rows_before - self.cell_before[cells]  # the cell's rows in its bins under j (-1 included)
        cleared = np.where(j < 0, own, below + frac * own)  # j = -1: the always-cleared bin, whole
        total = self.totals[cells]
        return np.where(total > 0, cleared / np.maximum(total, 1e-12), 1.0)


def apply_clearing_shares(
    curves: CellCurves,
    histogram: pd.DataFrame,
    cells: pd.DataFrame,
    columns: Sequence[str],
    bins: FloorBins,
    *,
    domain_keep: set[str] | None = None,
) -> CellCurves:
    """The curves of ``cells`` priced with floors: every cell's curve at the model's knots
    multiplied by the share of the cell's requests whose floor a bid there clears (in place: ``curves``
    must be ``CellCurves.of`` the same ``cells``, not a ``take`` of them, and is not to be used again),
    and beyond the knots the plain curve's tails times the share at the bid itself (``CellCurves.tails``
    and ``clearing``, a ``FloorShares``).
    A model with fewer than two knots has no knot table and is returned as it is (its curve is flat in
    the bid: there is no bid to search for)."""
    if curves.steps is None or len(curves) == 0:
        return curves
    if curves.tails is not None:
        raise ValueError("these curves are priced with floors already")
    if len(curves) != len(cells) or not np.array_equal(curves.index, np.arange(len(cells))):
        raise ValueError("clearing shares apply to the whole knot table of the same cells")
    cell, bin_, n, totals = cell_histograms(histogram, cells, columns, domain_keep=domain_keep)
    u = bins.position(curves.model.knots())
    # share at u: floors in the bins below u's bin, a fraction of u's own bin, and the always-cleared
    j = np.clip(np.floor(u), -1, FLOOR_BINS).astype(np.int64)
    frac = np.where((j >= 0) & (j < FLOOR_BINS), u - j, 0.0)
    tails = np.column_stack([curves.steps[:, 0], curves.steps[:, -1]]).astype(np.float32)
    clearing = FloorShares.of(cell, bin_, n, totals, bins)
    order = np.argsort(cell, kind="stable")
    cell, bin_, n = cell[order], bin_[order], n[order]
    for c0 in range(0, len(cells), CHUNK_CELLS):
        c1 = min(c0 + CHUNK_CELLS, len(cells))
        lo, hi = np.searchsorted(cell, [c0, c1])
        counts = np.zeros((c1 - c0, FLOOR_BINS + 2))  # column b + 1 is bin b (-1 .. FLOOR_BINS)
        np.add.at(counts, (cell[lo:hi] - c0, bin_[lo:hi] + 1), n[lo:hi])
        below = np.cumsum(counts, axis=1) - counts  # rows in the bins strictly below each column
        total = totals[c0:c1]
        col = j + 1
        cleared = below[:, col] + frac[None, :] * counts[:, col]
        # j = -1 (a bid below the lowest): the always-cleared column only, which below[:, 0] leaves out
        cleared = np.where(j[None, :] < 0, counts[:, [0]], cleared)
        share = np.where(total[:, None] > 0, cleared / np.maximum(total[:, None], 1e-12), 1.0)
        curves.steps[c0:c1] *= share.astype(np.float32)
    return dataclasses.replace(curves, tails=tails, clearing=clearing)
