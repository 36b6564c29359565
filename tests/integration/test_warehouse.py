"""The warehouse layer: the same cases on DuckDB/Parquet and on Snowflake (fakesnow server)."""

from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from bidopt.bidder.fields import feature_reader
from bidopt.cli.main import cli
from bidopt.errors import InvalidConfig
from bidopt.simulator import MarketSpec, simulate_market
from bidopt.warehouse import Window, open_warehouse
from bidopt.warehouse.contract import CONTRACT_COLUMNS, UNKNOWN, conform_bid_logs, floor_bucket_label

END = datetime(2026, 1, 31)
FULL = Window(datetime(2025, 1, 1), datetime(2027, 1, 1))


@pytest.fixture(scope="module")
def logs():
    a = simulate_market(
        MarketSpec(
            "drugs_hcp", rows=4000, days=10, end_time=END, seed=3, floor_available=True, npi_enabled=True, n_domains=50
        )
    )
    b = simulate_market(MarketSpec("auto_intenders", rows=1500, days=10, end_time=END, seed=4, n_domains=50))
    return a, b


def _expected(table: pa.Table, entity: str, group_by, bucket: float, window: Window, holdout_from=None):
    df = table.to_pandas()
    for col in ("geo_region_name", "os_code", "browser_code", "device_type", "domain"):
        df[col] = df[col].astype(str)
    df = df[(df.entity_code == entity) & (df.event_time >= window.start) & (df.event_time < window.end)]
    df = df.assign(
        bid_bucket=(df.bid_cpm // bucket).astype("int64"),
        floor_bucket=[floor_bucket_label(None if pd.isna(f) else f) for f in df.floor_cpm],
        npi_matched=df.npi_matched.map({True: "true", False: "false"}),
        spend=df.clearing_price_cpm.fillna(0.0),
        click_won=df.clicked & df.won,
        cleared=df.won | df.floor_cpm.isna() | (df.bid_cpm >= df.floor_cpm),
    )
    df["cleared_bid"] = df.bid_cpm.where(df.cleared, 0.0)
    keys = list(group_by)
    if holdout_from is not None:
        df["is_holdout"] = df.event_time >= holdout_from
        keys.append("is_holdout")
    keys.append("bid_bucket")
    return (
        df.groupby(keys)
        .agg(
            bids=("bid_cpm", "size"),
            wins=("won", "sum"),
            clicks=("click_won", "sum"),
            spend_cpm=("spend", "sum"),
            bid_sum=("bid_cpm", "sum"),
            cleared_bids=("cleared", "sum"),
            cleared_bid_sum=("cleared_bid", "sum"),
        )
        .reset_index()
    )


def _sorted(df, keys):
    return df.sort_values(keys).reset_index(drop=True)


@pytest.mark.parametrize(
    "group_by",
    [["geo_region_name"], ["geo_region_name", "device_type", "npi_matched"], ["os_code", "floor_bucket"], []],
)
def test_aggregate_matches_an_independent_groupby(warehouse, logs, group_by):
    a, b = logs
    warehouse.load_bid_logs(a)
    warehouse.load_bid_logs(b)
    window = Window(END - timedelta(days=6), END - timedelta(days=1))
    got = warehouse.aggregate_bids("drugs_hcp", window, group_by, bid_bucket_cpm=0.5).to_pandas()
    want = _expected(a, "drugs_hcp", group_by, 0.5, window)
    keys = group_by + ["bid_bucket"]
    got, want = _sorted(got, keys), _sorted(want, keys)
    assert len(got) == len(want) > 0
    for col in keys + ["bids", "wins", "clicks", "cleared_bids"]:
        assert got[col].tolist() == want[col].astype(got[col].dtype).tolist(), col
    if "floor_bucket" in group_by:  # drugs_hcp has floors: some bids were left below them
        assert (got["cleared_bids"] < got["bids"]).any()
    for col in ("spend_cpm", "bid_sum", "cleared_bid_sum"):
        assert got[col].to_numpy() == pytest.approx(want[col].to_numpy(), rel=1e-9)


@pytest.mark.parametrize("group_by", [["os_code", "npi_matched"], []])
def test_floor_histogram_matches_an_independent_count(warehouse, logs, group_by):
    a, b = logs
    warehouse.load_bid_logs(a)
    warehouse.load_bid_logs(b)
    window = Window(END - timedelta(days=6), END - timedelta(days=1))
    width = float(np.log(10.0 / 0.1) / 92)
    got = warehouse.floor_histogram(
        "drugs_hcp", window, group_by, lowest_cpm=0.1, highest_cpm=10.0, bins=92
    ).to_pandas()
    df = a.to_pandas()
    df = df[(df.entity_code == "drugs_hcp") & (df.event_time >= window.start) & (df.event_time < window.end)]
    df = df.assign(os_code=df.os_code.astype(str), npi_matched=df.npi_matched.map({True: "true", False: "false"}))
    has = df.floor_cpm.notna() & (df.floor_cpm > 0)
    position = np.floor((np.log(df.floor_cpm.where(has, 1.0)) - np.log(0.1)) / width)
    position = np.where(df.floor_cpm.where(has, 0.0) >= 10.0, 92, position)  # at or above the highest: 92
    df["floor_bin"] = pd.array([int(v) if h else None for v, h in zip(position, has)], dtype="Int64")
    want = df.groupby([*group_by, "floor_bin"], dropna=False).size().rename("n").reset_index()
    keys = [*group_by, "floor_bin"]
    got["floor_bin"] = got["floor_bin"].astype("Int64")  # int64 with nulls comes to pandas as floats
    got, want = _sorted(got, keys), _sorted(want, keys)
    assert got["n"].sum() == len(df) and got["floor_bin"].isna().any() and got["floor_bin"].notna().any()
    assert got[keys + ["n"]].astype(str).values.tolist() == want[keys + ["n"]].astype(str).values.tolist()
    for lowest, highest, bins in ((0.0, 10.0, 92), (10.0, 10.0, 92), (0.1, float("inf"), 92), (0.1, 10.0, 0)):
        with pytest.raises(InvalidConfig, match="floor bins"):
            warehouse.floor_histogram("drugs_hcp", window, group_by, lowest_cpm=lowest, highest_cpm=highest, bins=bins)


def test_floors_stored_before_the_contract_refused_them_are_a_bin_no_bid_clears(tmp_path, logs):
    """A NaN or infinite floor written before imports refused them (here: a Parquet part put in the
    folder by hand) is neither cleared in the aggregates nor a failed cast in the histogram."""
    wh = open_warehouse(f"duckdb:///{tmp_path}")
    part = logs[0].slice(0, 3).select(list(CONTRACT_COLUMNS))
    part = part.set_column(
        part.column_names.index("floor_cpm"), "floor_cpm", pa.array([float("nan"), float("inf"), 0.5], pa.float64())
    )
    part = part.set_column(part.column_names.index("bid_cpm"), "bid_cpm", pa.array([1.0, 1.0, 1.0]))
    part = part.set_column(part.column_names.index("won"), "won", pa.array([False, False, False]))
    folder = tmp_path / "bid_logs" / "entity_code=drugs_hcp"
    folder.mkdir(parents=True)
    pq.write_table(part.drop_columns(["entity_code"]), folder / "part-legacy.parquet")
    hist = wh.floor_histogram("drugs_hcp", FULL, [], lowest_cpm=0.1, highest_cpm=10.0, bins=64).to_pandas()
    assert dict(zip(hist["floor_bin"], hist["n"])) == {int(np.floor(np.log(5.0) / (np.log(100.0) / 64))): 1, 64: 2}
    agg = wh.aggregate_bids("drugs_hcp", FULL, [], bid_bucket_cpm=1.0).to_pandas()
    assert agg["bids"].sum() == 3 and agg["cleared_bids"].sum() == 1
    wh.close()


def test_holdout_flag_and_entity_isolation(warehouse, logs):
    a, b = logs
    warehouse.load_bid_logs(a)
    warehouse.load_bid_logs(b)
    holdout_from = END - timedelta(days=2)
    got = warehouse.aggregate_bids(
        "auto_intenders", FULL, ["device_type"], bid_bucket_cpm=1.0, holdout_from=holdout_from
    ).to_pandas()
    want = _expected(b, "auto_intenders", ["device_type"], 1.0, FULL, holdout_from)
    keys = ["device_type", "is_holdout", "bid_bucket"]
    assert (
        _sorted(got, keys)[keys + ["bids", "wins"]].values.tolist()
        == _sorted(want, keys)[keys + ["bids", "wins"]].values.tolist()
    )
    assert got["bids"].sum() == b.num_rows  # nothing of drugs_hcp leaks in
    assert got[got.is_holdout]["bids"].sum() == (b.to_pandas().event_time >= holdout_from).sum()


def test_summary_floors_and_empty_entities(warehouse, logs):
    a, _ = logs
    assert warehouse.summary("drugs_hcp") == {"bids": 0, "first_time": None, "last_time": None}
    assert warehouse.aggregate_bids("drugs_hcp", FULL, ["os_code"], bid_bucket_cpm=1.0).num_rows == 0
    warehouse.load_bid_logs(a)
    summary = warehouse.summary("drugs_hcp")
    df = a.to_pandas()
    assert summary["bids"] == len(df)
    assert abs((summary["first_time"] - df.event_time.min().to_pydatetime()).total_seconds()) < 1e-3
    floors = warehouse.typical_floors("drugs_hcp", FULL, ["device_type"]).to_pandas().set_index("device_type")
    want = df.assign(device_type=df.device_type.astype(str)).groupby("device_type").floor_cpm.median()
    for device, median in want.items():
        assert floors.loc[device, "typical_floor"] == pytest.approx(median)
    assert floors["floors"].sum() == df.floor_cpm.notna().sum()


@pytest.mark.parametrize("bad", [["domain; DROP TABLE bid_logs"], ["bid_cpm"], ["os_code", "os_code"]])
def test_feature_names_come_from_the_whitelist(warehouse, logs, bad):
    warehouse.load_bid_logs(logs[0])
    with pytest.raises(InvalidConfig):
        warehouse.aggregate_bids("drugs_hcp", FULL, bad, bid_bucket_cpm=1.0)


@pytest.mark.parametrize("entity", ["x' OR '1'='1", "../etc", "UPPER", ""])
def test_hostile_entity_codes_are_rejected(warehouse, entity):
    with pytest.raises(InvalidConfig, match="entity code"):
        warehouse.summary(entity)


def test_quotes_in_values_are_data_not_sql(warehouse, logs):
    """Values with quotes and the separator go through bindings and are normalised, not executed."""
    t = logs[1].slice(0, 5).to_pandas()
    t["domain"] = ["o'reilly.com", "a|b.com", 'x"; DROP TABLE bid_logs; --', "ok.com", "ok.com"]
    warehouse.load_bid_logs(pa.Table.from_pandas(t, preserve_index=False))
    got = warehouse.aggregate_bids("auto_intenders", FULL, ["domain"], bid_bucket_cpm=1000.0).to_pandas()
    assert sorted(got.domain) == sorted({"o'reilly.com", "a/b.com", 'x"; drop table bid_logs; --', "ok.com"})
    assert warehouse.summary("auto_intenders")["bids"] == 5


def test_contract_errors_name_the_column(logs):
    a = logs[0]
    with pytest.raises(InvalidConfig, match="lack column: won"):
        conform_bid_logs(a.drop_columns(["won"]))
    with pytest.raises(InvalidConfig, match="bid_cpm has 1 empty"):
        conform_bid_logs(
            a.set_column(
                a.column_names.index("bid_cpm"), "bid_cpm", pa.array([None] + [1.0] * (a.num_rows - 1), pa.float64())
            )
        )
    with pytest.raises(InvalidConfig, match="won cannot be read"):
        conform_bid_logs(a.set_column(a.column_names.index("won"), "won", pa.array(["maybe"] * a.num_rows)))
    out = conform_bid_logs(a)
    assert out.column_names == list(CONTRACT_COLUMNS)  # truth_* columns are dropped

    def with_column(name, first):
        rest = a.column(name).slice(1).to_pylist()
        return a.set_column(a.column_names.index(name), name, pa.array([first] + rest, pa.float64()))

    for name, value in (("bid_cpm", float("nan")), ("floor_cpm", float("-inf")), ("clearing_price_cpm", float("inf"))):
        with pytest.raises(InvalidConfig, match=f"{name} has 1 values that are not finite"):
            conform_bid_logs(with_column(name, value))
    # a NaN floor is no floor (null), as the optimizer's SQL and the bidder read an absent one; a NaN
    # price none paid
    for name in ("floor_cpm", "clearing_price_cpm"):
        assert conform_bid_logs(with_column(name, float("nan")))[name][0].as_py() is None


def test_a_contract_column_given_twice_is_refused(logs):
    a = logs[0]
    with pytest.raises(InvalidConfig, match="have column domain more than once"):
        conform_bid_logs(a.append_column("domain", pa.array(["x.com"] * a.num_rows)))


def test_unknown_warehouse_urls():
    with pytest.raises(InvalidConfig, match="unknown warehouse URL scheme"):
        open_warehouse("mysql://x/y")
    with pytest.raises(InvalidConfig, match="snowflake URL must look like"):
        open_warehouse("snowflake://acct/db")
    with pytest.raises(InvalidConfig, match="unknown snowflake URL parameter"):
        open_warehouse("snowflake://u:p@acct/db/sch?colour=red")


# Raw feature values as logs carry them: padded, mixed case, the key separator, empty, blank,
# absent, non-ASCII letters whose lower case Arrow and Python disagree on, ASCII control spaces.
RAW_FEATURE_VALUES = [
    "  MedNews.COM ",
    "a|b.com",
    "",
    "   ",
    None,
    "\u039f\u0394\u039f\u03a3.gr",
    "\u0130zmir.tr",
    "\x1cTab.com\x1f",
    "Tab.com",
    "x\u3000",
]


def _bidder_builds(raw):
    """The key part the bidder builds for a request whose site.domain is ``raw``."""
    site = {} if raw is None else {"domain": raw}
    return feature_reader("domain", "site.domain|app.bundle")({"site": site}, {})


def _with_domains(table: pa.Table, domains) -> pa.Table:
    return table.set_column(table.column_names.index("domain"), "domain", pa.array(domains, pa.string()))


def test_imported_feature_values_match_the_keys_the_bidder_builds(warehouse, logs):
    rows = logs[1].slice(0, len(RAW_FEATURE_VALUES))
    imported = conform_bid_logs(_with_domains(rows, RAW_FEATURE_VALUES))["domain"].to_pylist()
    for raw, value in zip(RAW_FEATURE_VALUES, imported):
        assert value != ""  # empty and blank values are stored as null ...
        assert (UNKNOWN if value is None else value) == _bidder_builds(raw), raw
    warehouse.load_bid_logs(_with_domains(rows, RAW_FEATURE_VALUES))
    got = warehouse.aggregate_bids("auto_intenders", FULL, ["domain"], bid_bucket_cpm=1000.0).to_pandas()
    # ... which aggregation reads as unknown: every key learnt is one the bidder can build
    assert set(got.domain) == {_bidder_builds(raw) for raw in RAW_FEATURE_VALUES}
    assert got.loc[got.domain == UNKNOWN, "bids"].sum() == 3


def test_pandas_parquet_with_nanoseconds_and_time_zones_imports_through_the_cli(tmp_path, logs):
    """pandas writes timestamp[ns] (tz-aware when the frame is): refused before as a lossy cast."""
    df = logs[0].slice(0, len(RAW_FEATURE_VALUES)).to_pandas()
    df["domain"] = RAW_FEATURE_VALUES
    local = pd.Timestamp("2026-01-20 09:30:00.123456789", tz="America/New_York")  # 14:30 UTC
    df["event_time"] = [local + pd.Timedelta(nanoseconds=i) for i in range(len(df))]
    df.to_parquet(tmp_path / "logs.parquet")
    naive = df.assign(event_time=df.event_time.dt.tz_convert(None))
    naive.to_parquet(tmp_path / "naive.parquet")
    assert pa.types.is_timestamp(pq.read_schema(tmp_path / "logs.parquet").field("event_time").type)

    runner = CliRunner()
    for name in ("logs.parquet", "naive.parquet"):
        res = runner.invoke(cli, ["data", "import", str(tmp_path / name)])
        assert res.exit_code == 0 and f"loaded {len(df)} bids" in res.output, res.output
    from bidopt.data import get_warehouse

    with get_warehouse() as wh:
        summary = wh.summary("drugs_hcp")
        assert summary["bids"] == 2 * len(df)
        # truncated to the microsecond, in UTC: every row of both files at 14:30:00.123456
        assert summary["first_time"] == summary["last_time"] == datetime(2026, 1, 20, 14, 30, 0, 123456)
        got = wh.aggregate_bids("drugs_hcp", FULL, ["domain"], bid_bucket_cpm=1000.0).to_pandas()
    assert set(got.domain) == {_bidder_builds(raw) for raw in RAW_FEATURE_VALUES}
