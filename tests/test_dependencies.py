"""Dependency floors clear the known advisories, and what is installed meets them (issue 5).

SECURITY_FLOORS is the lowest version of each package without a known advisory; the floor in
pyproject.toml must not fall below it, and the installed version must meet pyproject.toml.
docs/RELIABILITY.md lists the advisories each floor clears."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import sys

import pytest
import zmq
from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10, still supported: tomli is what became tomllib (a test dependency there)
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"

SECURITY_FLOORS = {
    "aiohttp": "3.14.4",  # CVE-2026-128126, CVE-2026-111748, CVE-2026-111750 and all before
    "pyzmq": "26.0",  # wheels bundle libzmq 4.3.5
    "supervisor": "4.2.5",  # CVE-2017-11610 (3.3.3), CVE-2019-12105 (4.0.3)
    "msgspec": "0.18",  # no advisory published
}
LIBZMQ_FLOOR = "4.3.5"  # CVE-2019-6250, -13132, CVE-2020-15166, -36400, CVE-2021-20234..20237
MSGPACK_FLOOR = "1.2.3"  # GHSA-6v7p-g79w-8964 (1.2.1), CVE-2026-114613 (1.2.3); not a dependency


def requirements() -> dict[str, Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    return {r.name.lower(): r for r in map(Requirement, project["dependencies"])}


def floor(requirement: Requirement) -> Version:
    lower = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=")]
    assert lower, f"{requirement} has no lower bound"
    return max(lower)


@pytest.mark.parametrize("name", sorted(SECURITY_FLOORS))
def test_floor_clears_the_advisories_and_is_installed(name):
    requirement = requirements()[name]
    assert floor(requirement) >= Version(SECURITY_FLOORS[name]), f"{requirement} is below the security floor"
    installed = metadata.version(name)
    assert requirement.specifier.contains(installed, prereleases=True), f"{name} {installed} does not meet {requirement}"


def test_libzmq_is_past_the_fixed_advisories():
    # pyzmq can also be built against the system's libzmq, so check the library actually loaded
    assert Version(zmq.zmq_version()) >= Version(LIBZMQ_FLOOR), zmq.zmq_version()


def test_msgpack_is_not_needed_and_not_vulnerable_if_present():
    # the wire codec is msgspec.msgpack; the msgpack package is neither listed nor required
    assert "msgpack" not in requirements()
    try:
        installed = metadata.version("msgpack")
    except metadata.PackageNotFoundError:
        return
    assert Version(installed) >= Version(MSGPACK_FLOOR), f"msgpack {installed} is installed (pulled in by something)"
