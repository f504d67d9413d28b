"""The guest image's NoCloud applier (it runs inside the guest; its pure parts are tested here,
its whole path in tests/realguest and the real-guest Partition tests)."""

from __future__ import annotations

from pathlib import Path

from lparkube_devenv.guestimage import nocloud


def test_runcmd_becomes_one_script_of_shell_lines_and_argvs(tmp_path: Path) -> None:
    script = tmp_path / "scripts" / "runcmd"
    nocloud.write_runcmd(["echo one > /tmp/a", ["touch", "/tmp/with space"], 7], script)
    assert script.read_text() == "#!/bin/sh\necho one > /tmp/a\ntouch '/tmp/with space'\n"
    assert script.stat().st_mode & 0o777 == 0o700


def test_no_runcmd_or_a_bad_one_writes_no_script(tmp_path: Path) -> None:
    script = tmp_path / "runcmd"
    for value in (None, [], "echo not a list"):
        nocloud.write_runcmd(value, script)
    assert not script.exists()
