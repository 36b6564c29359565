"""Reading external bid logs into the contract's layout.

* ``read_bid_log_file``: a CSV or Parquet file already in the documented layout.
* ``read_ipinyou_dlf``: the iPinYou campaign sample as preprocessed by DLF
  (``train.yzbx.txt`` / ``test.yzbx.txt`` + ``featindex.txt``). Each line is
  ``click market_price bid feat:1 ...``: the market price is the real paying price
  of an iPinYou auction (second price), the bid is the simulated bid DLF uses to
  censor it, so ``won = market_price < bid``. Features are one-hot indices that
  ``featindex.txt`` names (``field:value``): field 4 is the city (our geo),
  14 the user agent ``os_browser``, 6 the domain, 15 the slot price (the floor;
  DLF keeps it only as a band: 0, 1-10, 11-50, 51-100, 101+, and we take the
  band's lower edge), 0 and 1 weekday and hour. Prices are CNY fen per CPM and
  are divided by 100 (CNY CPM). DLF keeps no dates, so event times are rebuilt
  from weekday and hour: the train file in the week of Monday 2013-10-21, the
  test file in the week after, so a holdout from 2013-10-28 is the test file.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from bidopt.errors import InvalidConfig, NotFound
from bidopt.warehouse.contract import BID_LOG_SCHEMA, conform_bid_logs, normalise_feature_value

IPINYOU_TRAIN_WEEK = datetime(2013, 10, 21)  # a Monday
IPINYOU_TEST_WEEK = datetime(2013, 10, 28)
_FEN_PER_CNY = 100.0


def read_bid_log_file(path: Path, *, entity_code: str | None = None) -> pa.Table:
    """A CSV (with header) or Parquet file in the contract's layout, checked and typed.

    ``entity_code`` fills or overrides the ``entity_code`` column.
    """
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        table = pq.read_table(path)
    elif suffix in (".csv", ".gz") or path.name.endswith(".csv.gz"):
        types = {f.name: f.type for f in BID_LOG_SCHEMA}
        try:
            table = pacsv.read_csv(
                path,
                convert_options=pacsv.ConvertOptions(
                    column_types=types,
                    strings_can_be_null=True,
                    true_values=["true", "True", "TRUE", "1"],
                    false_values=["false", "False", "FALSE", "0"],
                ),
            )
        except pa.ArrowInvalid as exc:
            raise InvalidConfig(f"cannot read {path.name}: {exc}") from None
    else:
        raise InvalidConfig(f"unsupported file type {path.suffix!r}: use .csv, .csv.gz or .parquet")
    if entity_code is not None:
        col = pa.array([entity_code] * table.num_rows, pa.string())
        table = (
            table.set_column(table.column_names.index("entity_code"), "entity_code", col)
            if "entity_code" in table.column_names
            else table.append_column("entity_code", col)
        )
    return conform_bid_logs(table)


def _load_featindex(folder: Path) -> dict[int, tuple[int, str]]:
    out: dict[int, tuple[int, str]] = {}
    with open(folder / "featindex.txt", encoding="utf-8") as fh:
        for line in fh:
            name, _, idx = line.rstrip("\n").rpartition("\t")
            field, _, value = name.partition(":")
            out[int(idx)] = (int(field), value)
    return out


def _floor_from_band(band: str) -> float | None:
    if band in ("", "other", "0"):
        return None
    lower = band.split("-")[0].rstrip("+")
    return float(lower) / _FEN_PER_CNY


def _split_ua(ua: str) -> tuple[str | None, str | None, str | None]:
    if not ua or ua == "other":
        return None, None, None
    os_part, _, browser = ua.partition("_")
    device = {"android": "mobile", "ios": "mobile", "windows": "desktop", "mac": "desktop", "linux": "desktop"}.get(
        os_part
    )
    return os_part, browser or None, device


def read_ipinyou_dlf(folder: Path, split: str, *, entity_code: str) -> pa.Table:
    """One DLF file (``split`` = ``train`` or ``test``) in the contract's layout."""
    folder = Path(folder)
    if split not in ("train", "test"):
        raise InvalidConfig(f"split must be train or test, got {split!r}")
    path = folder / f"{split}.yzbx.txt"
    if not path.is_file() or not (folder / "featindex.txt").is_file():
        raise NotFound(f"{folder} does not hold {split}.yzbx.txt and featindex.txt")
    index = _load_featindex(folder)
    week = IPINYOU_TRAIN_WEEK if split == "train" else IPINYOU_TEST_WEEK
    cols: dict[str, list] = {n: [] for n in BID_LOG_SCHEMA.names}
    markets: list[float] = []
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh):
            parts = line.split()
            if len(parts) < 3:
                continue
            click, market, bid = int(parts[0]), float(parts[1]), float(parts[2])
            fields: dict[int, str] = {}
            for item in parts[3:]:
                field, value = index.get(int(item.split(":")[0]), (None, None))
                if field is not None:
                    fields[field] = value
            weekday = int(fields.get(0, "1")) if fields.get(0, "other").isdigit() else 1  # 0 = Sunday
            hour = int(fields.get(1, "0")) if fields.get(1, "other").isdigit() else 0
            os_code, browser, device = _split_ua(fields.get(14, ""))
            won = market < bid
            markets.append(market / _FEN_PER_CNY)
            cols["event_time"].append(week + timedelta(days=(weekday - 1) % 7, hours=hour, microseconds=line_no))
            cols["entity_code"].append(entity_code)
            cols["request_id"].append(f"ipinyou-{split}-{line_no}")
            cols["user_id"].append(None)
            cols["geo_region_name"].append(_feature(fields.get(4)))
            cols["os_code"].append(os_code)
            cols["browser_code"].append(browser)
            cols["device_type"].append(device)
            cols["domain"].append(_feature(fields.get(6)))
            cols["npi_matched"].append(False)
            cols["floor_cpm"].append(_floor_from_band(fields.get(15, "")))
            cols["bid_cpm"].append(bid / _FEN_PER_CNY)
            cols["won"].append(won)
            cols["clearing_price_cpm"].append(market / _FEN_PER_CNY if won else None)
            cols["clicked"].append(bool(click) and won)
    table = pa.table({n: pa.array(v, BID_LOG_SCHEMA.field(n).type) for n, v in cols.items()})
    # The real market price of every row, kept for evaluation (dropped on load like truth_*).
    return conform_bid_logs(table).append_column("truth_market_cpm", pa.array(markets, pa.float64()))


def _feature(value: str | None) -> str | None:
    if value is None or value == "other":
        return None
    return normalise_feature_value(value)
