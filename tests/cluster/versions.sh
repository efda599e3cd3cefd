# Versions of the local test cluster's parts, and where their builds are cached (outside the repo).
# Sourced by build, up and down. Changing a version changes the cache key, so it is rebuilt.
K8S_VERSION=v1.34.4
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
GATEWAY_API_VERSION=v1.7.0
LOCALL_CACHE=${LOCALL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/locall-operator}
K8S_BIN=$LOCALL_CACHE/cluster/k8s-$K8S_VERSION
# The optional real node (tests/cluster/node): kubelet and kube-proxy from the same module, and crictl.
CRICTL_VERSION=v1.34.0
K8S_NODE_BIN=$LOCALL_CACHE/cluster/k8s-node-$K8S_VERSION-crictl-$CRICTL_VERSION
ETCD_BIN=$LOCALL_CACHE/cluster/etcd-$ETCD_VERSION
KWOK_BIN=$LOCALL_CACHE/cluster/kwok-$KWOK_VERSION
# A Job pod with this label is held Running by kwok until the label is removed (see build).
KWOK_HOLD_LABEL=hold.locall.io/running
GATEWAY_DIR=$LOCALL_CACHE/cluster/gateway-api-$GATEWAY_API_VERSION
# Prometheus 3.16 from its Go module (Debian's 2.42 is built without Kubernetes service discovery,
# which the real node's pods are found by).
PROMETHEUS_VERSION=v0.316.0
# Built with only the discovery it needs (static, file, http and kubernetes): build tags
# remove_all_sd,enable_kubernetes_sd, part of the cache key.
PROMETHEUS_TAGS=remove_all_sd,enable_kubernetes_sd
PROMETHEUS_BIN=$LOCALL_CACHE/cluster/prometheus-$PROMETHEUS_VERSION-k8s-sd
HELM_VERSION=v3.22.0
HELM_BIN=$LOCALL_CACHE/cluster/helm-$HELM_VERSION
