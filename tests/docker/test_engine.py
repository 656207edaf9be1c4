"""docker/engine.sh's Debian mirror, without a Docker engine: `engine.sh mirror` run by sh against
apt sources written here, in both of apt's formats, as a host behind a company mirror has them.

The base images come from that mirror (debootstrap), so a wrong pick is a build that reaches the
wrong archive, or none when the host can only reach its company mirror.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENGINE = REPO / "docker" / "engine.sh"
OPERATIONS = REPO / "docs" / "operations.md"
DEFAULT = "http://deb.debian.org/debian"
KEY_BLOCK = """Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mQINBGPL0BUBEADmW5NdOOHwPIJlgPu6JDcKw/NZJPR8lsD3K87ZM18gzyQZJD+w
 -----END PGP PUBLIC KEY BLOCK-----
"""


def _mirror(apt_etc: Path, awk: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """`sh docker/engine.sh mirror` reading apt sources from apt_etc, with none of the caller's
    DEBIAN_MIRROR; awk, if given, is the awk on PATH (Debian's default is mawk, not gawk)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("DEBIAN_MIRROR", "DAPSEARCH_APT_ETC")}
    clean["DAPSEARCH_APT_ETC"] = str(apt_etc)
    if awk is not None:
        bin_dir = apt_etc.parent / f"bin-{Path(awk).name}"
        bin_dir.mkdir(exist_ok=True)
        (bin_dir / "awk").write_text(f'#!/bin/sh\nexec {awk} "$@"\n', encoding="utf-8")
        (bin_dir / "awk").chmod(0o755)
        clean["PATH"] = f"{bin_dir}{os.pathsep}{clean.get('PATH', '')}"
    clean.update(env)
    return subprocess.run(
        ["sh", str(ENGINE), "mirror"], env=clean, capture_output=True, text=True, timeout=30, check=False
    )


def _apt_etc(tmp_path: Path, sources_list: str = "", **parts: str) -> Path:
    """An /etc/apt: sources.list, and sources.list.d with the given files (name -> text)."""
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    (etc / "sources.list").write_text(sources_list, encoding="utf-8")
    for name, text in parts.items():
        (etc / "sources.list.d" / name).write_text(text, encoding="utf-8")
    return etc


def _picks(etc: Path, awk: str | None = None) -> str:
    result = _mirror(etc, awk)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    return result.stdout.strip()


def test_one_line_format_with_options_skips_security_sources_and_others(tmp_path: Path) -> None:
    keyring = "signed-by=/usr/share/keyrings/debian-archive-keyring.gpg"
    lines = [
        "# deb http://commented.example/debian bookworm main",
        "deb-src http://sources.example/debian bookworm main",
        f"deb [ arch=amd64 {keyring} ] http://mirror.corp/debian-security bookworm-security main",
        "deb http://old-security.example/ bullseye/updates main",
        "deb [arch=amd64] https://packages.cloud.google.com/apt cloud-sdk-bookworm main",
        "deb [arch=amd64] https://download.docker.com/linux/debian bookworm stable",
        "deb http://archive.ubuntu.com/ubuntu jammy main",
        "deb cdrom:[Debian GNU/Linux 12]/ bookworm main",
        "deb http://nonfree-only.example/debian bookworm non-free",
        f"deb [arch=amd64 {keyring}] http://mirror.corp/debian/ bookworm main contrib # the archive",
        "deb http://second.example/debian bookworm main",
    ]
    etc = _apt_etc(tmp_path, "\n".join(lines) + "\n")
    assert _picks(etc) == "http://mirror.corp/debian"


def test_deb822_takes_the_first_uri_of_the_first_debian_stanza(tmp_path: Path) -> None:
    etc = _apt_etc(
        tmp_path,
        "",
        **{
            "debian.sources": f"""# the company's mirrors
Types: deb
URIs: https://mirror.corp/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: https://sources.corp/debian
Suites: bookworm
Components: main

Enabled: no
Types: deb
URIs: https://disabled.corp/debian
Suites: bookworm
Components: main

types: deb deb-src
# a comment inside the stanza
uris: https://mirror.corp/debian/
 https://mirror2.corp/debian
suites: bookworm bookworm-updates
components: main contrib non-free-firmware
{KEY_BLOCK}
Types: deb
URIs: https://later.corp/debian
Suites: bookworm
Components: main
""",
        },
    )
    assert _picks(etc) == "https://mirror.corp/debian"


def test_sources_are_read_in_apts_order_and_only_apts_files(tmp_path: Path) -> None:
    """sources.list first, then sources.list.d by name, .list and .sources alike; other names
    (the .disabled a tool leaves behind, .save) are not apt's and are not read."""
    ubuntu = "deb http://archive.ubuntu.com/ubuntu jammy main\n"
    parts = {
        "00-old.list.disabled": "deb http://disabled.example/debian bookworm main\n",
        "10-nodesource.sources": (
            "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\nComponents: main\n"
        ),
        "20-debian.sources": (
            "Types: deb\nURIs: http://mirror.corp/debian\nSuites: stable\nComponents: main\n"
        ),
        "30-backports.list": "deb http://later.example/debian bookworm-backports main\n",
        "sources.list.save": "deb http://saved.example/debian bookworm main\n",
    }
    assert _picks(_apt_etc(tmp_path / "a", ubuntu, **parts)) == "http://mirror.corp/debian"
    own = "deb http://main-list.corp/debian trixie main\n"
    assert _picks(_apt_etc(tmp_path / "b", own, **parts)) == "http://main-list.corp/debian"


def test_every_installed_awk_picks_the_same(tmp_path: Path) -> None:
    """Debian's awk is mawk, other hosts have gawk or busybox: the script is POSIX awk."""
    awks = [
        f"{found} awk" if name == "busybox" else found
        for name in ("mawk", "gawk", "busybox")
        if (found := shutil.which(name))
    ]
    assert awks, "no awk installed"
    etc = _apt_etc(
        tmp_path,
        "deb [ arch=amd64 ] http://mirror.corp/debian-security bookworm-security main\n",
        **{
            "debian.sources": f"Types: deb\nURIs: http://a.corp/debian http://b.corp/debian\n"
            f"Suites: bookworm-updates\nComponents: main\n{KEY_BLOCK}"
        },
    )
    for awk in awks:
        assert _picks(etc, awk) == "http://a.corp/debian", awk


def test_debian_mirror_overrides_the_host(tmp_path: Path) -> None:
    etc = _apt_etc(tmp_path, "deb http://mirror.corp/debian bookworm main\n")
    result = _mirror(etc, DEBIAN_MIRROR="http://override.corp/debian")
    assert (result.returncode, result.stdout, result.stderr) == (0, "http://override.corp/debian\n", "")
    # Set but empty is unset: the host's mirror.
    assert _mirror(etc, DEBIAN_MIRROR="").stdout == "http://mirror.corp/debian\n"


def test_no_debian_archive_falls_back_to_deb_debian_org_and_says_so(tmp_path: Path) -> None:
    ubuntu = _apt_etc(
        tmp_path / "ubuntu",
        "deb http://archive.ubuntu.com/ubuntu jammy main\n"
        "deb http://security.debian.org/debian-security bookworm-security main\n",
    )
    missing = tmp_path / "missing"  # no /etc/apt at all
    for etc in (ubuntu, missing):
        result = _mirror(etc)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{DEFAULT}\n"
        assert str(etc) in result.stderr and DEFAULT in result.stderr and "DEBIAN_MIRROR" in result.stderr


def test_no_mirror_host_is_written_into_a_debootstrap_command() -> None:
    """The script and the runbook pass debootstrap the mirror from `engine.sh mirror`, never a host."""
    engine = ENGINE.read_text(encoding="utf-8")
    code = [line for line in engine.splitlines() if not line.lstrip().startswith("#")]
    calls = [line for line in code if line.lstrip().startswith("debootstrap ")]
    assert calls and all('"$MIRROR"' in c and "://" not in c for c in calls), calls
    assert "        MIRROR=$(debian_mirror)" in code
    assert [line for line in code if "://deb.debian.org" in line] == [f"DEFAULT_MIRROR={DEFAULT}"]

    doc = OPERATIONS.read_text(encoding="utf-8").replace("\\\n", " ")
    commands = [line for line in doc.splitlines() if line.startswith("debootstrap --")]
    assert len(commands) == 2 and all('"$MIRROR"' in c and "://" not in c for c in commands), commands
    assert "MIRROR=$(docker/engine.sh mirror)" in doc
    assert "DEBIAN_MIRROR" in doc and "sources.list.d" in doc
