#!/usr/bin/env python3
"""Checks the memobuild chart the way a cluster would, without a cluster.

For the default values and every profile in helm/memobuild/ci/*-values.yaml:
`helm lint --strict`, `helm template`, and kubernetes-validate --strict of
every built-in kind against each Kubernetes version in KUBE_VERSIONS with no
warning allowed. Then the rendered objects are checked against each other:
every autoscaler, PodDisruptionBudget, Service, ServiceMonitor and
NetworkPolicy points at pods the chart renders; probes name ports that
exist; the config checksum rolls the pods when the config changes. Every
file in helm/tests/bad-values/ must be refused by values.schema.json with
the message its `# expect:` line names.

Usage: check_chart.py [--out DIR]   (DIR keeps the rendered manifests)
Tools: $HELM (default /opt/memobuild-k8s/helm) and $KUBERNETES_VALIDATE
(default /opt/memobuild-k8s/venv/bin/kubernetes-validate), both installed by
scripts/install-deps.sh.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "memobuild"
BAD_VALUES = ROOT / "helm" / "tests" / "bad-values"
KUBE_VERSIONS = ["1.29.0", "1.30.0", "1.31.0"]
HELM = os.environ.get("HELM", "/opt/memobuild-k8s/helm")
KUBERNETES_VALIDATE = os.environ.get("KUBERNETES_VALIDATE", "/opt/memobuild-k8s/venv/bin/kubernetes-validate")
# Kinds the chart renders that Kubernetes itself does not define (CRDs):
# checked here against the objects they point at, not by kubernetes-validate.
CRD_KINDS = {"ServiceMonitor"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet"}

failures = []


def fail(profile, message):
    failures.append(f"{profile}: {message}")


def run(args, **kw):
    return subprocess.run(args, capture_output=True, text=True, **kw)


def helm(*args):
    return run([HELM, *args])


def profiles():
    found = sorted(CHART.glob("ci/*-values.yaml"))
    if len(found) < 6:
        fail("chart", f"only {len(found)} profiles in {CHART}/ci (want at least 6)")
    return [("default values", [])] + [(p.name, ["-f", str(p)]) for p in found]


def render(name, flags):
    lint = helm("lint", "--strict", str(CHART), *flags)
    if lint.returncode != 0:
        fail(name, f"helm lint --strict failed:\n{lint.stdout}{lint.stderr}")
    out = helm("template", "mb", str(CHART), "--namespace", "builds", *flags)
    if out.returncode != 0:
        fail(name, f"helm template failed:\n{out.stderr}")
        return "", []
    return out.stdout, [d for d in yaml.safe_load_all(out.stdout) if d]


def validate(name, docs, workdir):
    builtin = [d for d in docs if d["kind"] not in CRD_KINDS]
    path = Path(workdir) / (name.replace(" ", "-") + ".builtin.yaml")
    path.write_text(yaml.safe_dump_all(builtin))
    for version in KUBE_VERSIONS:
        res = run([KUBERNETES_VALIDATE, "--strict", "-k", version, str(path)])
        bad = [line for line in (res.stdout + res.stderr).splitlines() if not line.startswith("INFO")]
        if res.returncode != 0 or bad:
            fail(name, f"kubernetes-validate {version} (rc {res.returncode}):\n" + "\n".join(bad))


def key(doc):
    return (doc["kind"], doc["metadata"]["name"])


def pod_labels(docs):
    """(workload key, its pod template labels) of every workload."""
    return [(key(d), d["spec"]["template"]["metadata"]["labels"]) for d in docs if d["kind"] in WORKLOAD_KINDS]


def selects(selector, labels):
    """A label selector (matchLabels and In expressions) against labels."""
    if all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()):
        return all(
            e["operator"] == "In" and labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions") or []
        )
    return False


def check_references(name, docs):
    objects = {key(d): d for d in docs}
    pods = pod_labels(docs)
    for d in docs:
        kind, spec = d["kind"], d.get("spec", {})
        if kind == "HorizontalPodAutoscaler":
            ref = spec["scaleTargetRef"]
            target = objects.get((ref["kind"], ref["name"]))
            if target is None or ref["kind"] not in WORKLOAD_KINDS or ref.get("apiVersion") != target["apiVersion"]:
                fail(name, f"autoscaler {d['metadata']['name']} targets {ref}, which the chart does not render")
            elif "replicas" in target["spec"]:
                fail(name, f"{ref['kind']} {ref['name']} sets replicas although autoscaler {d['metadata']['name']} owns them")
        if kind in ("PodDisruptionBudget",) and not any(selects(spec["selector"], labels) for _, labels in pods):
            fail(name, f"PodDisruptionBudget {d['metadata']['name']} selects no pod")
        if kind == "Service" and not any(selects({"matchLabels": spec["selector"]}, labels) for _, labels in pods):
            fail(name, f"Service {d['metadata']['name']} selects no pod")
        if kind == "NetworkPolicy" and not any(selects(spec["podSelector"], labels) for _, labels in pods):
            fail(name, f"NetworkPolicy {d['metadata']['name']} selects no pod")
        if kind == "ServiceMonitor":
            services = [s for s in docs if s["kind"] == "Service" and selects(spec["selector"], s["metadata"]["labels"])]
            if not services:
                fail(name, f"ServiceMonitor {d['metadata']['name']} selects no Service")
            for endpoint in spec["endpoints"]:
                for s in services:
                    if endpoint["port"] not in {p["name"] for p in s["spec"]["ports"]}:
                        fail(name, f"ServiceMonitor port {endpoint['port']} is not a port of Service {s['metadata']['name']}")
        if kind in WORKLOAD_KINDS:
            check_pod(name, d, objects)


def check_pod(name, workload, objects):
    template = workload["spec"]["template"]
    pod = template["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    uses_config = any(v.get("configMap") for v in volumes.values())
    if uses_config and "checksum/config" not in (template["metadata"].get("annotations") or {}):
        fail(name, f"{workload['kind']} {workload['metadata']['name']} mounts the config without a checksum annotation")
    for c in pod["containers"]:
        ports = {p["name"] for p in c.get("ports", [])}
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            http = (c.get(probe) or {}).get("httpGet")
            if uses_config and http is None:
                fail(name, f"container {c['name']} of {workload['metadata']['name']} has no HTTP {probe}")
            if http and uses_config and (http["path"] != path or http["port"] not in ports):
                fail(name, f"{probe} of {c['name']} is {http}, want {path} on a declared port")
        for mount in c.get("volumeMounts", []):
            claims = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
            if mount["name"] not in volumes and mount["name"] not in claims:
                fail(name, f"container {c['name']} mounts volume {mount['name']}, which the pod does not have")


def check_checksum_rolls(name, flags, docs):
    """A config change must change the checksum on every pod that mounts it."""
    if not flags:
        return
    _, changed = render(name + " (changed config)", flags + ["--set", "config.limits.max_uploads=7"])
    before = {key(d): d["spec"]["template"]["metadata"].get("annotations", {}) for d in docs if d["kind"] in WORKLOAD_KINDS}
    for d in changed:
        old = before.get(key(d))
        new = d["spec"]["template"]["metadata"].get("annotations", {}) if d["kind"] in WORKLOAD_KINDS else None
        if old and "checksum/config" in old and old["checksum/config"] == new.get("checksum/config"):
            fail(name, f"{d['kind']} {d['metadata']['name']}: the config changed but checksum/config did not")


def check_bad_values():
    files = sorted(BAD_VALUES.glob("*.yaml"))
    if not files:
        fail("bad values", f"no files in {BAD_VALUES}")
    for path in files:
        expect = [l.split(":", 1)[1].strip() for l in path.read_text().splitlines() if l.startswith("# expect:")]
        res = helm("template", "mb", str(CHART), "-f", str(path))
        text = res.stdout + res.stderr
        if res.returncode == 0:
            fail(path.name, "helm template accepted values the schema must refuse")
        elif not expect or expect[0] not in text:
            fail(path.name, f"refused, but not with {expect!r}:\n{res.stderr}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", help="keep the rendered manifests in this directory")
    args = parser.parse_args()
    for tool in (HELM, KUBERNETES_VALIDATE):
        if not os.access(tool, os.X_OK):
            sys.exit(f"{tool} not found: run scripts/install-deps.sh (or set HELM / KUBERNETES_VALIDATE)")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.out or tmp
        os.makedirs(workdir, exist_ok=True)
        checked = 0
        for name, flags in profiles():
            text, docs = render(name, flags)
            if not docs:
                continue
            (Path(workdir) / (name.replace(" ", "-") + ".rendered.yaml")).write_text(text)
            validate(name, docs, workdir)
            check_references(name, docs)
            check_checksum_rolls(name, flags, docs)
            checked += 1
        check_bad_values()
    for f in failures:
        print(f"FAIL {f}", file=sys.stderr)
    if failures:
        sys.exit(1)
    print(f"chart ok: {checked} value sets, Kubernetes {', '.join(KUBE_VERSIONS)}, bad values refused")


if __name__ == "__main__":
    main()
