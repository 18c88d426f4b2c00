"""Validates rendered Kubernetes manifests offline against the Kubernetes 1.28 to 1.33
JSON schemas (kubernetes-validate, strict: unknown fields are errors).

Usage: validate_manifests.py FILE   (multi-document YAML from `helm template`)

Custom resources (the Prometheus operator's ServiceMonitor and PodMonitor) have no
schema there; they get a structural check instead. Exits 1 naming every problem.
"""

import sys

import kubernetes_validate
import yaml

VERSIONS = ["1.28.0", "1.29.0", "1.30.0", "1.31.0", "1.32.0", "1.33.0"]
CUSTOM = {"ServiceMonitor", "PodMonitor"}


def check_custom(doc):
    problems = []
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append("apiVersion must be monitoring.coreos.com/v1")
    spec = doc.get("spec") or {}
    if not (spec.get("selector") or {}).get("matchLabels"):
        problems.append("spec.selector.matchLabels is empty")
    endpoints = spec.get("endpoints") or spec.get("podMetricsEndpoints") or []
    if not endpoints or not all(e.get("port") for e in endpoints):
        problems.append("every endpoint needs a port")
    return problems


def main(path):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    if not docs:
        print(f"{path}: no manifests")
        return 1
    failures = 0
    for doc in docs:
        name = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        if doc.get("kind") in CUSTOM:
            for p in check_custom(doc):
                print(f"{name}: {p}")
                failures += 1
            continue
        for version in VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                print(f"{name} (Kubernetes {version}): {e.message} at {'.'.join(str(p) for p in e.path)}")
                failures += 1
            except Exception as e:  # unknown kind or version
                print(f"{name} (Kubernetes {version}): {e}")
                failures += 1
    print(f"{len(docs)} manifests, {len(VERSIONS)} Kubernetes versions, {failures} problem(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
