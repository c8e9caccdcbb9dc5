"""The Jetson image's L4T line check (edge-image/cloudtutor_edge/l4t.py) and its hook in `cloudtutor edge`."""

from __future__ import annotations

import pytest

from cloudtutor.cli import main
from cloudtutor_edge import l4t

# Real first lines of /etc/nv_tegra_release on JetPack 6.1 and 5.1.2 devices.
R36 = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n"
R35 = "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023\n"


def test_parse_release_reads_major_revision_and_board() -> None:
    release = l4t.parse_release(R36)
    assert (release.major, release.revision, release.minor, release.board) == (36, "4.3", 4, "generic")
    assert str(release) == "r36.4.3"


def test_matching_line_passes_with_and_without_revision() -> None:
    assert l4t.check("r36", R36).major == 36
    assert l4t.check("r36.4", R36).revision == "4.3"


def test_mismatched_major_line_is_refused_naming_both_lines() -> None:
    with pytest.raises(l4t.L4tError, match=r"built for L4T r36 but the device runs L4T r35\.4\.1"):
        l4t.check("r36", R35)


def test_mismatched_revision_is_refused() -> None:
    with pytest.raises(l4t.L4tError, match="L4T mismatch"):
        l4t.check("r36.3", R36)


def test_missing_release_file_cannot_be_verified() -> None:
    with pytest.raises(l4t.L4tError, match="mount the host's file"):
        l4t.check("r36", None)


@pytest.mark.parametrize("text", ["", "Ubuntu 22.04\n", "# R36 REVISION 4.3\n"])
def test_garbage_release_text_is_an_error(text: str) -> None:
    with pytest.raises(l4t.L4tError, match="cannot read an L4T release"):
        l4t.parse_release(text)


@pytest.mark.parametrize("value", ["36", "jetpack6", "r36.x", ""])
def test_bad_expected_line_is_an_error(value: str) -> None:
    with pytest.raises(l4t.L4tError, match="is not an L4T line"):
        l4t.parse_line(value)


def test_environment_without_expected_line_skips_the_check(tmp_path) -> None:
    assert l4t.check_environment({}) is None
    assert l4t.check_environment({l4t.LINE_ENV: " ", l4t.RELEASE_FILE_ENV: str(tmp_path / "none")}) is None


def test_environment_reads_the_release_file(tmp_path) -> None:
    release = tmp_path / "nv_tegra_release"
    release.write_text(R36)
    assert l4t.check_environment({l4t.LINE_ENV: "r36", l4t.RELEASE_FILE_ENV: str(release)}).major == 36
    with pytest.raises(l4t.L4tError, match=str(tmp_path / "missing")):
        l4t.check_environment({l4t.LINE_ENV: "r36", l4t.RELEASE_FILE_ENV: str(tmp_path / "missing")})


def test_cloudtutor_edge_refuses_a_mismatched_line_before_anything_else(tmp_path, monkeypatch, capsys) -> None:
    release = tmp_path / "nv_tegra_release"
    release.write_text(R35)
    monkeypatch.setenv(l4t.LINE_ENV, "r36")
    monkeypatch.setenv(l4t.RELEASE_FILE_ENV, str(release))
    # A config file that does not exist: the L4T check must stop the agent first.
    assert main(["edge", "--config", str(tmp_path / "absent.yaml")]) == 3
    err = capsys.readouterr().err
    assert "built for L4T r36 but the device runs L4T r35.4.1" in err
