#!/usr/bin/env bash
# Offline checks of the Helm chart charts/pomona (no cluster needed), run by scripts/test.sh:
#
#   1. helm lint --strict, with the default values, ci/all-options-values.yaml (every option set)
#      and ci/single-replica-values.yaml (the other branches), by Helm 4 and by Helm 3
#   2. helm template (CRDs included, Kubernetes 1.33) with those values; Helm 3 and Helm 4
#      must render the same manifests
#   3. the renders grant exactly the operator's RBAC, nothing to the runner ServiceAccounts,
#      and the Deployment names the runner ServiceAccount it creates
#   4. kubernetes-validate --strict on the renders (core kinds; custom resources are skipped)
#   5. checkov (Kubernetes framework, offline) on the renders: no failed check, and every
#      skipped check carries its reason (a checkov.io/skip annotation in the chart)
#   6. every values file of ci/invalid/ is refused by values.schema.json (template and lint, by
#      both Helm versions)
#   7. NOTES.txt shows the first steps and warns of replicas without leader election
#   8. helm package builds the chart archive, with its CRD and schema and without ci/
#
# Tools are installed on first use into .tools/ (scripts/tools.sh). Exits non-zero on the first
# failed check.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/tools.sh

CHART=charts/pomona
KUBE_VERSION=1.33.0
NAMESPACE=pomona-system
RELEASE=pomona

ensure_helm
ensure_validators
ensure_checkov
helm=$POMONA_HELM
declare -A HELMS=([helm4]="$POMONA_HELM" [helm3]="$POMONA_HELM3")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fail() {
    echo "chart-checks: FAILED: $*" >&2
    exit 1
}

# name -> helm values arguments
declare -A VALUES=(
    [default]=""
    [all-options]="-f $CHART/ci/all-options-values.yaml"
    [single-replica]="-f $CHART/ci/single-replica-values.yaml"
)
RENDERS=(default all-options single-replica)

echo "--> helm lint --strict ($("$POMONA_HELM" version --short), $("$POMONA_HELM3" version --short))"
for name in "${RENDERS[@]}"; do
    for h in helm4 helm3; do
        # shellcheck disable=SC2086
        "${HELMS[$h]}" lint --strict --quiet --kube-version "$KUBE_VERSION" "$CHART" ${VALUES[$name]} \
            >"$work/lint-$name.log" 2>&1 || { cat "$work/lint-$name.log"; fail "$h lint ($name values)"; }
    done
    echo "    $name values: ok"
done

echo "--> helm template (Kubernetes $KUBE_VERSION)"
for name in "${RENDERS[@]}"; do
    # shellcheck disable=SC2086
    "$helm" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --include-crds \
        --kube-version "$KUBE_VERSION" ${VALUES[$name]} >"$work/$name.yaml" \
        || fail "helm template ($name values)"
    # shellcheck disable=SC2086
    "$POMONA_HELM3" template "$RELEASE" "$CHART" --namespace "$NAMESPACE" --include-crds \
        --kube-version "$KUBE_VERSION" ${VALUES[$name]} >"$work/$name-helm3.yaml" \
        || fail "helm3 template ($name values)"
    diff -u "$work/$name.yaml" "$work/$name-helm3.yaml" || fail "Helm 3 renders otherwise than Helm 4 ($name values)"
    kinds=$(grep -E '^kind: ' "$work/$name.yaml" | sed 's/^kind: //' | sort | uniq -c \
        | awk '{printf "%s%s×%s", sep, $2, $1; sep=", "}')
    echo "    $name values: $kinds"
done

echo "--> what the renders grant and set"
"$(dirname "$POMONA_CHECKOV")/python" - "$work" <<'PY' || fail "the renders grant or set something else than intended"
import sys
from pathlib import Path

import yaml

work = Path(sys.argv[1])
errors = []


def load(name):
    return [d for d in yaml.safe_load_all((work / f"{name}.yaml").read_text()) if d]


def expect(what, got, want):
    if got != want:
        errors.append(f"{what}: got {got!r}, want {want!r}")


def rules(docs, kind, name):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    expect(f"one {kind} {name}", len(found), 1)
    return sorted((g, r, tuple(sorted(rule["verbs"])))
                  for rule in (found[0]["rules"] if found else [])
                  for g in rule["apiGroups"] for r in rule["resources"])


def operator_rules():
    # No Secrets: the operator never reads one (a run's credentials reach its pods through
    # secretKeyRef). ConfigMaps only written: the reduce Job's list of failed shards.
    return sorted([
        ("pomona.dev", "featureextractions", ("get", "list", "watch")),
        ("pomona.dev", "featureextractions/status", ("get", "patch")),
        ("pomona.dev", "featureextractions/finalizers", ("update",)),
        ("batch", "jobs", ("create", "delete", "get", "list", "patch", "watch")),
        ("", "configmaps", ("create", "patch")),
        ("", "pods", ("list", "watch")),
        ("events.k8s.io", "events", ("create", "patch")),
    ])


LEASES = [("coordination.k8s.io", "leases", ("create", "get", "update"))]


def check(name, fullname, runner_sa, role_kind, role_ns, runner_namespaces):
    docs = load(name)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    expect(f"{name}: POMONA_RUNNER_SERVICE_ACCOUNT", env["POMONA_RUNNER_SERVICE_ACCOUNT"], runner_sa)
    expect(f"{name}: operator pod mounts its token", pod.get("automountServiceAccountToken"), True)
    accounts = [d for d in docs if d["kind"] == "ServiceAccount"]
    for sa in accounts:
        expect(f"{name}: ServiceAccount {sa['metadata']['name']} automount", sa.get("automountServiceAccountToken"), False)
    runner = sorted(sa["metadata"]["namespace"] for sa in accounts if sa["metadata"]["name"] == runner_sa)
    expect(f"{name}: namespaces of the runner ServiceAccount", runner, sorted(runner_namespaces))
    bindings = [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    for b in bindings:
        for subject in b["subjects"]:
            if subject["name"] == runner_sa:
                errors.append(f"{name}: {b['kind']} {b['metadata']['name']} binds the runner ServiceAccount")
            expect(f"{name}: {b['kind']} {b['metadata']['name']} subject", subject["name"], pod["serviceAccountName"])
    if role_kind is None:
        expect(f"{name}: RBAC objects", [d["kind"] for d in docs if "Role" in d["kind"]], [])
        return
    expect(f"{name}: operator {role_kind}", rules(docs, role_kind, fullname), operator_rules())
    role = next(d for d in docs if d["kind"] == role_kind and d["metadata"]["name"] == fullname)
    expect(f"{name}: {role_kind} namespace", role["metadata"].get("namespace"), role_ns)
    expect(f"{name}: leader-election Role", rules(docs, "Role", f"{fullname}-leader-election"), LEASES)
    expect(f"{name}: cluster-wide kinds",
           sorted({d["kind"] for d in docs if d["kind"].startswith("Cluster")}),
           ["ClusterRole", "ClusterRoleBinding"] if role_kind == "ClusterRole" else [])


check("default", "pomona", "pomona-runner", "ClusterRole", None, ["pomona-system"])
check("all-options", "fruits-pomona", "fruits-runner", "Role", "fruits",
      ["pomona-system", "fruits", "fruits-staging"])
check("single-replica", "pomona", "", None, None, [])
for e in errors:
    print(f"    {e}")
if errors:
    sys.exit(1)
print("    RBAC exactly as the operator calls; runner ServiceAccounts bound to nothing, no token")
PY

echo "--> kubernetes-validate --strict -k $KUBE_VERSION"
for name in "${RENDERS[@]}"; do
    "$POMONA_KUBERNETES_VALIDATE" --strict -k "$KUBE_VERSION" "$work/$name.yaml" \
        >"$work/validate-$name.log" 2>&1 || { cat "$work/validate-$name.log"; fail "kubernetes-validate ($name values)"; }
    passed=$(grep -c ' passed for resource ' "$work/validate-$name.log" || true)
    skipped=$(grep -c "Couldn't find schema" "$work/validate-$name.log" || true)
    echo "    $name values: $passed resources valid, $skipped custom resources skipped"
done

echo "--> checkov --framework kubernetes"
for name in "${RENDERS[@]}"; do
    mkdir -p "$work/checkov-$name"
    # Exit code 1 means failed checks; the JSON report below says which.
    "$POMONA_CHECKOV" -f "$work/$name.yaml" --framework kubernetes --skip-download \
        --output json --output-file-path "$work/checkov-$name" >/dev/null 2>"$work/checkov-$name.log" || true
    report="$work/checkov-$name/results_json.json"
    [ -s "$report" ] || { cat "$work/checkov-$name.log"; fail "checkov wrote no report ($name values)"; }
    "$(dirname "$POMONA_CHECKOV")/python" - "$report" "$name" <<'PY' || fail "checkov ($name values)"
import json
import sys

report = json.load(open(sys.argv[1]))
report = report[0] if isinstance(report, list) else report
results, summary = report["results"], report["summary"]
print(f"    {sys.argv[2]} values: {summary['passed']} passed, {summary['failed']} failed, "
      f"{summary['skipped']} skipped, {summary['parsing_errors']} parsing errors")
ok = summary["failed"] == 0 and summary["parsing_errors"] == 0 and summary["passed"] > 0
for check in results["skipped_checks"]:
    reason = (check.get("check_result") or {}).get("suppress_comment", "")
    print(f"      skipped {check['check_id']} on {check['resource'].split('.app.kubernetes')[0]}: {reason}")
    if not reason or reason == "No comment provided":
        print("      ^ a skip needs its reason: checkov.io/skipN: CHECK_ID=reason")
        ok = False
for check in results["failed_checks"]:
    print(f"      FAILED {check['check_id']} {check['check_name']} on {check['resource']}")
sys.exit(0 if ok else 1)
PY
done

echo "--> values.schema.json refuses wrong values"
for file in "$CHART"/ci/invalid/*.yaml; do
    for h in helm3 helm4; do
        if "${HELMS[$h]}" template "$RELEASE" "$CHART" --kube-version "$KUBE_VERSION" -f "$file" \
            >/dev/null 2>"$work/invalid.log"; then
            fail "$h template accepted $file"
        fi
        grep -q "schema" "$work/invalid.log" || { cat "$work/invalid.log"; fail "$file refused by $h, but not by the schema"; }
        if "${HELMS[$h]}" lint --strict --quiet "$CHART" -f "$file" >/dev/null 2>&1; then
            fail "$h lint accepted $file"
        fi
    done
    # Helm 4's message, kept in invalid.log by the last loop turn.
    printf '    %-30s %s\n' "$(basename "$file")" "$(grep -m1 "^- " "$work/invalid.log")"
done

echo "--> NOTES.txt (helm install --dry-run=client)"
notes() { "$helm" install "$RELEASE" "$CHART" --namespace "$NAMESPACE" --dry-run=client "$@" | sed -n '/^NOTES:/,$p'; }
notes >"$work/notes.txt"
grep -q 'wait --for=condition=Complete' "$work/notes.txt" || fail "NOTES.txt lacks the kubectl wait line"
grep -q 'kubectl -n pomona-system get fx' "$work/notes.txt" || fail "NOTES.txt lacks kubectl get fx"
if grep -q WARNING "$work/notes.txt"; then fail "NOTES.txt warns with the default values"; fi
notes --set leaderElection.enabled=false >"$work/notes.txt"
grep -q 'WARNING: leaderElection.enabled is false with replicaCount 2' "$work/notes.txt" \
    || fail "NOTES.txt does not warn of several replicas without leader election"
notes -f "$CHART/ci/single-replica-values.yaml" >"$work/notes.txt"
if grep -q WARNING "$work/notes.txt"; then fail "NOTES.txt warns with one replica"; fi
echo "    first-run steps shown; warns of replicas > 1 without leader election, only then"

echo "--> helm package"
"$helm" package "$CHART" --destination "$work/package" >/dev/null || fail "helm package"
archive=$(ls "$work"/package/pomona-*.tgz)
contents=$(tar -tzf "$archive")
for want in pomona/Chart.yaml pomona/values.schema.json pomona/crds/featureextraction.yaml \
    pomona/templates/deployment.yaml pomona/README.md; do
    grep -qx "$want" <<<"$contents" || fail "$(basename "$archive") lacks $want"
done
if grep -q '^pomona/ci/' <<<"$contents"; then
    fail "$(basename "$archive") holds the test values (ci/): see .helmignore"
fi
echo "    $(basename "$archive"): $(wc -l <<<"$contents") files"

echo "chart-checks: all passed"
