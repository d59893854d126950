"""Rename records to the identity rule in force: `python -m runners.migrate DIR [DIR ...] [--dry-run]`.

A record's file name ends in its identity (conf/identity.yaml). When the rule changes, a
record written under the old rule would no longer be found by its relaunch; this renames each
`<name>.json` under DIR, with its `<name>.ckpt/` and `<name>.model/` folders (and the record's
`saved_model`), to the name its stored config gives today. It renames nothing when two records
would take one name, or when a lock shows a run may be live. Running it again renames nothing.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from runners import record
from runners.paths import RunPaths, record_name

RECORD_NAME = re.compile(r"^lr.+-hlr.+-s\d+-[0-9a-f]{12}\.json$")  # runners.paths.record_name's shape


def renames(folder: Path) -> list[tuple[Path, Path]]:
    """(old, new) for every record under `folder` whose name is not the one its config gives."""
    moves = []
    for path in sorted(folder.rglob("*.json")):
        if not RECORD_NAME.match(path.name):  # failed/<hash of overrides>.json, tables, notes
            continue
        new = path.with_name(record_name(record.read(path)["config"]))
        if new != path:
            moves.append((path, new))
    return moves


def problems(folder: Path, moves: list[tuple[Path, Path]]) -> list[str]:
    """Why the renames cannot all be done; empty when they can."""
    leaving = {old for old, _ in moves}
    targets: dict[Path, list[Path]] = defaultdict(list)
    for old, new in moves:
        targets[new].append(old)
    out = [f"{', '.join(map(str, olds))} would all become {new}" for new, olds in targets.items() if len(olds) > 1]
    out += [f"{olds[0]} would become {new}, which exists" for new, olds in targets.items()
            if len(olds) == 1 and new.exists() and new not in leaving]
    out += [f"{lock} exists: a run may be live (remove the lock once no run is)" for lock in folder.rglob("*.lock")]
    return out


def move(old: Path, new: Path) -> None:
    """The checkpoint and saved model first, the record last: interrupted, a second run finishes it."""
    if new.exists():  # a chain (a record renamed onto another's old name): never overwrite
        raise FileExistsError(f"{new} exists; run migrate again once the rest is renamed")
    was, becomes = RunPaths(old), RunPaths(new)
    for before, after in ((was.checkpoint, becomes.checkpoint), (was.model, becomes.model)):
        if before.exists():
            before.rename(after)
    rec: dict[str, Any] = record.read(old)
    if rec.get("saved_model") == str(was.model):
        rec["saved_model"] = str(becomes.model)
        record.write(new, rec)
        old.unlink()
    else:  # the bytes stay as written
        old.rename(new)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="results folders (a sweep's results_dir)")
    ap.add_argument("--dry-run", action="store_true", help="print the renames, change nothing")
    args = ap.parse_args(argv)
    for folder in args.dirs:
        if not folder.is_dir():
            print(f"error: no such folder: {folder}", file=sys.stderr)
            return 2
        try:
            moves = renames(folder)
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            print(f"error: {folder}: a record without a readable config ({type(e).__name__}: {e})", file=sys.stderr)
            return 2
        if found := problems(folder, moves):
            print(f"error: {folder}: nothing renamed: {found[0]}"
                  + (f" (and {len(found) - 1} more)" if len(found) > 1 else ""), file=sys.stderr)
            return 1
        for old, new in moves:
            print(f"{old.relative_to(folder)} -> {new.name}")
            if not args.dry_run:
                move(old, new)
        total = sum(1 for p in folder.rglob("*.json") if RECORD_NAME.match(p.name))
        verb = "would be renamed" if args.dry_run else "renamed"
        print(f"migrate {folder}: {len(moves)} {verb}, {total - len(moves)} already named by their identity")
    return 0


if __name__ == "__main__":
    sys.exit(main())
