"""``python -m helpers.kube``: the course's chart from a shell (notebook 10).

    .venv/bin/python -m helpers.kube render deploy/helm/values-cpu-smol.yaml     # render + validate, offline
    .venv/bin/python -m helpers.kube render deploy/helm/values-gpu-3090.yaml --out /tmp/manifests.yaml
    .venv/bin/python -m helpers.kube values gpu-3090                             # the values file, from the settings

Exit status 0 when every document is valid, 2 with one message when something is wrong.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from ..errors import CourseError


def main(argv: Sequence[str] | None = None) -> int:
    from .chart import KUBE_VERSION, render_chart
    from .values import VALUES_FILES, values_text

    parser = argparse.ArgumentParser(prog="python -m helpers.kube", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser("render", help="render the chart with a values file and validate every document")
    render.add_argument("values", help="a values file, e.g. deploy/helm/values-cpu-smol.yaml")
    render.add_argument("--out", help="write the manifests here (default: print a summary only)")
    render.add_argument("--release", default="course")
    render.add_argument("--namespace", default="vllm")
    render.add_argument("--kube-version", default=KUBE_VERSION)
    values = commands.add_parser("values", help="print a course values file written from the settings")
    values.add_argument("kind", choices=sorted(VALUES_FILES))
    args = parser.parse_args(argv)
    try:
        if args.command == "values":
            sys.stdout.write(values_text(args.kind))
            return 0
        rendered = render_chart(args.values, release=args.release, namespace=args.namespace,
                                kube_version=args.kube_version)
    except CourseError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(rendered.text() + "\n", encoding="utf-8")
    print(f"{args.values}: {len(rendered.documents)} documents, valid for Kubernetes {args.kube_version}:")
    for kind in rendered.kinds():
        print(f"  {kind}")
    if args.out:
        print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
