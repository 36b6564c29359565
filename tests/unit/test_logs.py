"""The optimizer reports through logging ("bidopt.optimizer"); configure_logging prints bidopt's
records as bare lines, progress on stdout and trouble on stderr, as the prints did."""

import logging

import pytest

from bidopt.logs import LOGGER, configure_logging


@pytest.fixture
def clean_logger():
    logger = logging.getLogger(LOGGER)
    saved = logger.handlers[:], logger.level
    logger.handlers.clear()
    yield logger
    logger.handlers[:], logger.level = saved[0], saved[1]


def test_progress_on_stdout_trouble_on_stderr_as_bare_lines(clean_logger, capsys):
    configure_logging()
    configure_logging()  # idempotent: one line per record
    log = logging.getLogger("bidopt.optimizer")
    log.info("%s: %s", "20260101_000000", "optimising drugs_hcp")
    log.debug("not shown")
    log.warning("heartbeat failed: gone")
    out, err = capsys.readouterr()  # capsys swaps the streams after configuration: lines follow them
    assert out == "20260101_000000: optimising drugs_hcp\n"
    assert err == "heartbeat failed: gone\n"


def test_the_optimizer_logs_its_progress_and_trouble(caplog, monkeypatch):
    import socket

    from bidopt.jobs import optimize as job
    from bidopt.settings import reset_settings_cache

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    monkeypatch.setenv("BIDOPT_DATABASE_URL", f"postgresql+psycopg://u@127.0.0.1:{port}/db")
    reset_settings_cache()
    caplog.set_level(logging.INFO, logger="bidopt.optimizer")
    # The database is away from the start: the run's failure cannot be recorded either.
    result = job.process_run("20990101_000000", "host:1:abcdef", 1)
    assert result["status"] == "abandoned" and "DatabaseUnavailable" in result["error"]
    lines = [(r.name, r.levelname, r.getMessage()) for r in caplog.records]
    assert ("bidopt.optimizer", "INFO") == lines[0][:2]
    assert lines[0][2].startswith("20990101_000000: failed: DatabaseUnavailable: cannot reach the metadata database")
    assert lines[-1][:2] == ("bidopt.optimizer", "WARNING")
    assert lines[-1][2].startswith("run 20990101_000000: could not record its failure: cannot reach")


def test_a_ray_task_configures_its_own_logging(clean_logger, monkeypatch, capsys):
    from bidopt.jobs import optimize as job

    def process_run(run_id, worker_id, attempt):
        job.log.info("%s: %s", run_id, "optimising drugs_hcp")
        return {"status": "completed"}

    monkeypatch.setattr(job, "process_run", process_run)
    assert job._process_run_task("r1", "w", 1) == {"status": "completed"}
    assert capsys.readouterr().out == "r1: optimising drugs_hcp\n"
