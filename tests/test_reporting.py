"""What each DDP process says: the main one everything, the others only their own share."""

from __future__ import annotations

import logging

from trainkit.reporting import OWN_SHARE, setup_worker_logging


def test_a_process_other_than_the_main_one_says_only_its_errors_and_its_own_share(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("RANK", "1")
    setup_worker_logging(tmp_path, main=False)
    log = logging.getLogger("trainkit")
    log.info("epoch 1")
    log.warning("scheduler=step keeps the lr")  # every process finds it: the main one says it
    log.warning("3 images could not be decoded", extra=OWN_SHARE)
    log.error("failed")
    assert capsys.readouterr().err.splitlines() == [
        "[rank 1] 3 images could not be decoded",
        "[rank 1] failed",
    ]
    assert not (tmp_path / "train.log").exists()


def test_the_main_process_says_every_warning_and_logs_it_to_the_run(tmp_path, capsys):
    setup_worker_logging(tmp_path, main=True)
    logging.getLogger("trainkit").warning("scheduler=step keeps the lr")
    assert "scheduler=step keeps the lr" in capsys.readouterr().out  # (the console)
    assert "scheduler=step keeps the lr" in (tmp_path / "train.log").read_text()
