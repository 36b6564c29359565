"""Importing external logs: files in the documented layout, and the real iPinYou sample."""

import json

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pytest
from click.testing import CliRunner

from bidopt.cli.main import cli
from bidopt.errors import InvalidConfig, NotFound
from bidopt.simulator import MarketSpec, simulate_market
from bidopt.warehouse.contract import CONTRACT_COLUMNS
from bidopt.warehouse.imports import read_bid_log_file, read_ipinyou_dlf


@pytest.fixture
def sample():
    return simulate_market(MarketSpec("drugs_hcp", rows=500, seed=2, floor_available=True)).select(
        list(CONTRACT_COLUMNS)
    )


def test_csv_and_parquet_round_trip(tmp_path, sample):
    import pyarrow.parquet as pq

    plain = sample.cast(
        pa.schema(
            [pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type) for f in sample.schema]
        )
    )
    pacsv.write_csv(plain, tmp_path / "logs.csv")
    pq.write_table(plain, tmp_path / "logs.parquet")
    for name in ("logs.csv", "logs.parquet"):
        got = read_bid_log_file(tmp_path / name, entity_code="other_line")
        assert got.num_rows == 500 and set(got["entity_code"].to_pylist()) == {"other_line"}
        assert got["bid_cpm"].equals(plain["bid_cpm"])
        assert got["floor_cpm"].null_count == plain["floor_cpm"].null_count


def test_bad_files_get_clear_errors(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(InvalidConfig, match="unsupported file type"):
        read_bid_log_file(tmp_path / "x.json")
    with pytest.raises(NotFound):
        read_bid_log_file(tmp_path / "missing.csv")
    (tmp_path / "short.csv").write_text("event_time,bid_cpm\n2026-01-01 00:00:00,1.0\n")
    with pytest.raises(InvalidConfig, match="lack columns"):
        read_bid_log_file(tmp_path / "short.csv")


def test_ipinyou_adapter_on_the_real_sample(shared_data):
    folder = shared_data / "ipinyou_2259_DLF"
    train = read_ipinyou_dlf(folder, "train", entity_code="ipinyou_2259")
    test = read_ipinyou_dlf(folder, "test", entity_code="ipinyou_2259")
    # the numbers shared/data/README.md gives for these files
    assert (train.num_rows, test.num_rows) == (8355, 4171)
    assert pc.mean(train["won"].cast(pa.int8())).as_py() == pytest.approx(0.344, abs=0.001)
    assert pc.mean(test["won"].cast(pa.int8())).as_py() == pytest.approx(0.239, abs=0.001)
    assert pc.count_distinct(train["geo_region_name"]).as_py() == 22
    assert pc.count_distinct(train["domain"]).as_py() >= 1000
    assert pc.max(train["event_time"]).as_py() < pc.min(test["event_time"]).as_py()
    won = test.filter(test["won"])
    assert pc.all(pc.less(won["clearing_price_cpm"], won["bid_cpm"])).as_py()  # market < bid
    assert set(train["os_code"].to_pylist()) >= {"windows", "mac"}


def test_cli_import_and_summary(tmp_path, sample):
    plain = sample.cast(
        pa.schema(
            [pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type) for f in sample.schema]
        )
    )
    pacsv.write_csv(plain, tmp_path / "logs.csv")
    runner = CliRunner()
    res = runner.invoke(cli, ["data", "import", str(tmp_path / "logs.csv")])
    assert res.exit_code == 0 and "loaded 500 bids" in res.output, res.output
    summary = json.loads(runner.invoke(cli, ["data", "summary", "drugs_hcp", "--json"]).output)
    assert summary["bids"] == 500
    res = runner.invoke(cli, ["data", "generate", "drugs_hcp", "--rows", "1200", "--seed", "3"])
    assert res.exit_code == 0, res.output
    assert json.loads(runner.invoke(cli, ["data", "summary", "drugs_hcp", "--json"]).output)["bids"] == 1700
    res = runner.invoke(cli, ["data", "generate", "Bad Code"])
    assert res.exit_code == 1 and "entity code must match" in res.output
