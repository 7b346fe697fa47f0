"""Write the pins of ra3's installed dependency closure (``ra3[dev]``), i.e. the versions last tested.

    python3 .ci/constraints.py > constraints.txt      # after a green run on the newest releases
    python3 .ci/constraints.py --diff constraints.txt # what differs from the pinned file (no write)

Only packages reachable from ra3's own requirements are listed, so the file does not depend on what else the
machine has installed. torch is pinned to the CPU wheel CI installs first.
"""
import argparse
import re
import sys
from importlib import metadata

from packaging.markers import default_environment
from packaging.requirements import Requirement


def closure(root: str = "ra3", extras: tuple[str, ...] = ("dev",)) -> dict[str, str]:
    env = default_environment()
    seen: dict[str, str] = {}
    todo = [(root, set(extras))]
    while todo:
        name, want = todo.pop()
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        key = re.sub(r"[-_.]+", "-", dist.metadata["Name"]).lower()
        if key in seen and not want:
            continue
        seen[key] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            ok = req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in (want or {""}))
            if ok:
                todo.append((req.name, set(req.extras)))
    seen.pop("ra3", None)
    return seen


def read(path: str) -> dict[str, str]:
    pins = {}
    for line in open(path):
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version.strip()
    return pins


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--diff", metavar="FILE", help="print the packages whose installed version differs from FILE's pin")
    args = ap.parse_args()
    now = closure()
    if args.diff:
        old = read(args.diff)
        changed = [f"{k}: {old.get(k, '-')} -> {v}" for k, v in sorted(now.items()) if old.get(k) != v.split("+")[0]]
        print("\n".join(changed) if changed else f"installed versions match {args.diff}")
        return 0
    print("# Versions ra3 was last tested with (CI installs these: pip install -c constraints.txt ...).")
    print("# Regenerate after a green `RA3_DEPS=latest bash .ci/run`: python3 .ci/constraints.py > constraints.txt")
    for k, v in sorted(now.items()):
        print(f"{k}=={v.split('+')[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
