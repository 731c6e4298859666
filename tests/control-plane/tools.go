//go:build tools

// Keeps the commands scripts/tools.sh builds in this module's dependency graph, so `go mod tidy`
// records every package they need in go.sum.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
