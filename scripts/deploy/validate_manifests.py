"""Validates the objects `helm template` rendered (run by scripts/test_deploy.sh).

Core Kubernetes kinds are checked with kubernetes-validate in strict mode (unknown fields are
errors); the KEDA ScaledObject and the prometheus-operator ServiceMonitor with the validators
their npm packages ship (validate_crds.mjs, under node). A kind neither knows is an error, so
nothing renders unchecked. The metrics the ScaledObject queries must be ones fairgate defines.

    python validate_manifests.py --k8s-version 1.33.0 --node-modules DIR \
        [--expect Kind=N ...] rendered.yaml
"""

import argparse
import collections
import json
import pathlib
import re
import subprocess
import sys

import kubernetes_validate
import yaml

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
# Kinds whose schema comes from an npm package (validate_crds.mjs), by apiVersion/kind.
CRD_KINDS = {"keda.sh/v1alpha1/ScaledObject", "monitoring.coreos.com/v1/ServiceMonitor"}


def name_of(obj):
    return f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"


def fairgate_metric_names():
    """Every `fairgate_*` string literal in the gateway's Rust sources."""
    names = set()
    for path in (REPO / "crates").glob("*/src/**/*.rs"):
        names.update(re.findall(r'"(fairgate_[a-z0-9_]+)"', path.read_text(encoding="utf-8")))
    return names


def check_queries(objs, errors):
    """The ScaledObjects' PromQL names only metrics fairgate exports."""
    known = fairgate_metric_names()
    for obj in objs:
        if obj.get("kind") != "ScaledObject":
            continue
        for trig in obj["spec"].get("triggers", []):
            query = trig.get("metadata", {}).get("query", "")
            used = set(re.findall(r"\b(fairgate_[a-z0-9_]+)\b", query))
            if not used:
                errors.append(f"{name_of(obj)}: trigger {trig.get('name')!r} queries no fairgate metric: {query}")
            for metric in sorted(used - known):
                errors.append(f"{name_of(obj)}: {metric} is not a metric fairgate defines (query: {query})")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--k8s-version", required=True)
    ap.add_argument("--node-modules", required=True, help="node_modules holding @kubernetes-models/*")
    ap.add_argument("--node", default="node")
    ap.add_argument("--expect", action="append", default=[], metavar="KIND=N",
                    help="the file must hold exactly N objects of KIND")
    ap.add_argument("file")
    args = ap.parse_args()

    with open(args.file, encoding="utf-8") as f:
        objs = [o for o in yaml.safe_load_all(f) if o]
    errors = []
    crds = []
    for obj in objs:
        gvk = f"{obj.get('apiVersion')}/{obj.get('kind')}"
        if gvk in CRD_KINDS:
            crds.append(obj)
            continue
        try:
            kubernetes_validate.validate(obj, args.k8s_version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{name_of(obj)}: no schema for {gvk} (neither Kubernetes {args.k8s_version} nor a known CRD)")
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path)
            errors.append(f"{name_of(obj)}: {path}: {e.message}")

    if crds:
        proc = subprocess.run(
            [args.node, str(HERE / "validate_crds.mjs"), args.node_modules],
            input=json.dumps(crds), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            errors.append(f"CRD validation failed:\n{proc.stdout}{proc.stderr}")
    check_queries(objs, errors)

    counts = collections.Counter(o.get("kind") for o in objs)
    for want in args.expect:
        kind, _, n = want.partition("=")
        if counts.get(kind, 0) != int(n):
            errors.append(f"expected {n} {kind}, rendered {counts.get(kind, 0)}")

    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    if errors:
        print(f"{args.file}: {len(errors)} error(s)")
        for e in errors:
            print(f"  - {e}")
        sys.exit(1)
    print(f"{args.file}: {len(objs)} objects valid ({summary})")


if __name__ == "__main__":
    main()
