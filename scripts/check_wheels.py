"""Does every dependency install from a wheel on Colab's Python? For each requirement of requirements.txt, of
pyproject.toml's extras and of the extras installed without their dependencies (`core/extras.py`), fetch the
wheel pip would choose on Colab (CPython 3.12, x86-64 Linux with glibc 2.35), without its dependencies:

    pip download --only-binary=:all: --python-version 3.12 --platform manylinux_2_35_x86_64 ... --no-deps \\
        -d /tmp/whl312 REQUIREMENT

and print one row per requirement: the wheel pip took, or why there is none. A requirement without a wheel
fails the check (exit status 1) unless SOURCE_ONLY names it with the reason it still installs there. Wheels
already in the folder are not fetched again.

    python scripts/check_wheels.py [--python-version 3.12] [--dest /tmp/whl312]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from tqdm import tqdm

from megatron_utils.core.extras import EXTRAS

REPO = Path(__file__).resolve().parents[1]
# Colab's runtime is Ubuntu 22.04 (glibc 2.35): every manylinux tag up to 2.35 installs there. pip does not
# widen a --platform of the newer manylinux_X_Y form to older ones itself, so all are named.
COLAB_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(35, 16, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
# Published as source only, and why pip still installs them on Colab.
SOURCE_ONLY = {
    "face-recognition-models": "an sdist of dlib's model files and no code to compile: pip builds it into a "
                               "pure-Python wheel on any Python",
}


def requirements() -> list[tuple[str, str]]:
    """(where it is declared, requirement) for every dependency and extra, each once."""
    found = [("requirements.txt", line.split("#")[0].strip())
             for line in (REPO / "requirements.txt").read_text().splitlines()]
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    found += [(f"extra {name}", requirement) for name, listed in extras.items() for requirement in listed
              if not requirement.startswith("megatron-deepfake")]  # "all" names the other extras
    found += [(f"extra {name} (--no-deps)", extra.no_deps) for name, extra in EXTRAS.items() if extra.no_deps]
    unique: dict[str, tuple[str, str]] = {}
    for where, requirement in found:
        if requirement:
            unique.setdefault(requirement, (where, requirement))
    return list(unique.values())


def fetch_wheel(requirement: str, python_version: str, dest: Path) -> tuple[str | None, str]:
    """(the file pip fetched, None when there is no wheel; pip's last error)."""
    platforms = [option for platform in COLAB_PLATFORMS for option in ("--platform", platform)]
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--python-version",
                           python_version, *platforms, "--no-deps", "--disable-pip-version-check", "-d",
                           str(dest), requirement], capture_output=True, text=True)
    # "Saved /tmp/whl312/x.whl", or "File was already downloaded /tmp/whl312/x.whl" on a second run
    fetched = [Path(line.split()[-1]).name for line in done.stdout.splitlines()
               if line.strip().startswith(("Saved ", "File was already downloaded "))]
    if done.returncode != 0 or not fetched:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
        return None, errors[-1] if errors else done.stderr.strip()[-200:]
    return fetched[-1], ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-version", default="3.12", help="Colab's Python (default: 3.12)")
    parser.add_argument("--dest", type=Path, default=Path("/tmp/whl312"), help="where the wheels go")
    args = parser.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    rows, allowed, failed = [], [], []
    for where, requirement in tqdm(requirements(), desc="wheels", unit="requirement"):
        wheel, error = fetch_wheel(requirement, args.python_version, args.dest)
        name = canonicalize_name(Requirement(requirement).name)
        if wheel:
            rows.append((requirement, where, wheel))
        elif name in SOURCE_ONLY:
            rows.append((requirement, where, f"no wheel, allowed: {SOURCE_ONLY[name]}"))
            allowed.append(requirement)
        else:
            rows.append((requirement, where, f"NO WHEEL: {error}"))
            failed.append(requirement)
    width = max(len(requirement) for requirement, _, _ in rows)
    places = max(len(where) for _, where, _ in rows)
    print(f"\nwheels for CPython {args.python_version} on x86-64 Linux, glibc 2.35 (Colab), in {args.dest}:")
    for requirement, where, outcome in rows:
        print(f"{requirement:<{width}}  {where:<{places}}  {outcome}")
    print(f"\n{len(rows) - len(allowed) - len(failed)} of {len(rows)} requirements have a wheel for Python "
          f"{args.python_version}; source only, allowed: {', '.join(allowed) or 'none'}; "
          f"source only, not allowed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
