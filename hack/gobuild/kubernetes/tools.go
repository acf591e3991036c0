//go:build tools

// Package tools pins the Kubernetes commands that hack/build-k8s.sh (control plane) and
// hack/build-node.sh (kubelet, kube-proxy) build.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
