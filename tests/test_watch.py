"""class2d.watch: the ``class2d live`` loop, with a fake workflow run and a fake clock."""

from __future__ import annotations

import pytest
import yaml

from class2d import watch


def test_config_value_prefers_config_over_configfiles(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"particles": "from_file.star", "outdir": "there"}))
    args = ["--cores", "2", "--configfile", str(path), "--config", "particles=p.star", "x=1"]
    assert watch.config_value(args, "particles", "demo") == "p.star"
    assert watch.config_value(args, "outdir", "results") == "there"
    assert watch.config_value(["--cores", "1"], "outdir", "results") == "results"


class FakeTime:
    def __init__(self):
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_runs_when_the_input_grows_and_stops_when_idle(tmp_path, capsys):
    star = tmp_path / "p.star"
    star.write_text("a\n")
    fake, runs = FakeTime(), []

    def run(command):
        runs.append(command)
        if len(runs) == 1:
            star.write_text("a\nb\n")        # grows while the first run is going on
        return 0

    args = ["--cores", "1", "--config", f"particles={star}", f"outdir={tmp_path / 'out'}"]
    assert watch.watch(args, every=10, idle=30, run=run, clock=fake.clock,
                       sleep=fake.sleep) == 0
    assert len(runs) == 2 and runs[0][-len(args):] == args
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "done in" in lines[0] and "stopping" in lines[-1]
    assert fake.now >= 30


def test_ctrl_c_stops_with_130(tmp_path, capsys):
    def run(command):
        raise KeyboardInterrupt

    assert watch.watch(["--config", "particles=demo"], every=1, idle=5, run=run) == 130
    assert "stopped" in capsys.readouterr().out


def test_a_failed_round_is_said_and_the_watch_goes_on():
    assert "failed (exit status 1)" in watch.status_line("nowhere", 1.0, 1)


def test_bad_every_is_an_error():
    with pytest.raises(SystemExit):
        watch.main(["--every", "0"])
