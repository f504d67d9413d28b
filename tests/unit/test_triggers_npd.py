"""The node-problem-detector examples: the check scripts follow NPD's plugin protocol on fake
sysfs trees, and the monitors set exactly the conditions the example profile watches."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from lparkube.api.generate import repo_root

NPD = repo_root() / "examples" / "node-problem-detector"
OK, PROBLEM, UNKNOWN = 0, 1, 2


def run(script: str, *args: str, env: dict[str, str]) -> tuple[int, str]:
    argv = ["sh", str(NPD / script), *args]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=10, check=False)
    return done.returncode, done.stdout.strip()


def zone(root: Path, name: str, millidegrees: int) -> None:
    path = root / name
    path.mkdir(parents=True)
    (path / "temp").write_text(f"{millidegrees}\n")
    (path / "type").write_text("x86_pkg_temp\n")


@pytest.mark.parametrize(
    ("temps", "code"), [([40000, 97000], PROBLEM), ([95000], PROBLEM), ([94999], OK), ([], UNKNOWN)]
)
def test_thermal_check(tmp_path: Path, temps: list[int], code: int) -> None:
    for i, temp in enumerate(temps):
        zone(tmp_path, f"thermal_zone{i}", temp)
    result, message = run("check-thermal.sh", "95", env={"THERMAL_ROOT": str(tmp_path)})
    assert result == code, message
    assert message


def battery(root: Path, capacity: str, status: str) -> None:
    path = root / "BAT0"
    path.mkdir()
    for name, value in (("type", "Battery"), ("capacity", capacity), ("status", status)):
        (path / name).write_text(value + "\n")


@pytest.mark.parametrize(
    ("capacity", "status", "code"),
    [("2", "Discharging", PROBLEM), ("3", "Discharging", OK), ("1", "Charging", OK)],
)
def test_battery_check(tmp_path: Path, capacity: str, status: str, code: int) -> None:
    battery(tmp_path, capacity, status)
    result, message = run("check-battery.sh", "2", env={"POWER_SUPPLY_ROOT": str(tmp_path)})
    assert result == code, message


def test_no_battery_is_unknown(tmp_path: Path) -> None:
    assert run("check-battery.sh", env={"POWER_SUPPLY_ROOT": str(tmp_path)})[0] == UNKNOWN


def test_monitors_feed_the_example_profile() -> None:
    profile = yaml.safe_load((NPD / "conditionprofile.yaml").read_text())
    watched = {r["nodeCondition"]["type"] for r in profile["spec"]["rules"]}
    set_by_npd = set()
    for name in ("thermal-monitor.json", "battery-monitor.json"):
        monitor = json.loads((NPD / name).read_text())
        assert monitor["plugin"] == "custom"
        for rule in monitor["rules"]:
            assert rule["type"] == "permanent"
            assert (NPD / Path(rule["path"]).name).is_file()
            set_by_npd.add(rule["condition"])
        assert {c["type"] for c in monitor["conditions"]} <= set_by_npd
    assert watched == set_by_npd == {"ThermalPressure", "BatteryLow"}
