{{/* Names, labels, the image and the operator's RBAC rules, shared by the templates. */}}

{{- define "difusor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-difusor, or the release name when it already contains the chart name. */}}
{{- define "difusor.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of cluster-scoped objects (ClusterRole, ClusterRoleBinding): a release is a name in a
namespace, so the namespace is part of the name and two releases never clash.
*/}}
{{- define "difusor.clusterName" -}}
{{- printf "%s-%s" (include "difusor.fullname" .) .Release.Namespace | trunc 253 | trimSuffix "-" }}
{{- end }}

{{- define "difusor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object of the chart (never those of the operator's children). */}}
{{- define "difusor.commonLabels" -}}
helm.sh/chart: {{ include "difusor.chart" . }}
app.kubernetes.io/name: {{ include "difusor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels of the operator's objects. */}}
{{- define "difusor.labels" -}}
{{ include "difusor.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "difusor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "difusor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "difusor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "difusor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "difusor.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
What the operator does in a namespace it watches, derived from operator/difusor:
kopf and the handlers (publications), the reconcile (children by server-side apply, pruning,
generated Secrets, Events) and the agents' Role that the operator creates: RBAC lets a subject
grant only permissions it holds, so every rule of render/children.py agent_role is here too.
tests/test_chart.py checks these rules against managed_kinds() and agent_role().
*/}}
{{- define "difusor.namespacedRules" -}}
# kopf lists and watches publications and keeps its progress in their annotations; the
# StatefulSet event handler reads one by name.
- apiGroups: ["prep.difusor.io"]
  resources: ["preppublications"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["prep.difusor.io"]
  resources: ["preppublications/status"]
  verbs: ["patch"]
# Children carry ownerReferences with blockOwnerDeletion, which clusters running the
# OwnerReferencesPermissionEnforcement admission plugin check against this subresource.
- apiGroups: ["prep.difusor.io"]
  resources: ["preppublications/finalizers"]
  verbs: ["update"]
# Granted to the agents by their Role (cuts, their own pods, Events).
- apiGroups: ["prep.difusor.io"]
  resources: ["prepcuts"]
  verbs: ["get", "list", "watch", "create"]
- apiGroups: ["prep.difusor.io"]
  resources: ["prepcuts/status"]
  verbs: ["get", "patch", "update"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["", "events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# Incidents: the prober, the promotion and the containment open, update and close them.
- apiGroups: ["prep.difusor.io"]
  resources: ["prepincidents"]
  verbs: ["get", "list", "watch", "create", "patch"]
- apiGroups: ["prep.difusor.io"]
  resources: ["prepincidents/status"]
  verbs: ["patch"]
# SFTP host keys and the agents' token: generated once, never changed. Read (get) for each
# CDN purge: the provider's credentials (spec.cdn.credentialsSecret) and the agents' token, with
# which the operator reads the cuts' manifests from the agents.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "get"]
# Children: server-side apply (get, create, patch) and pruning (list, delete).
- apiGroups: [""]
  resources: ["configmaps", "services", "serviceaccounts"]
  verbs: ["get", "list", "create", "patch", "delete"]
# The operator also watches its StatefulSets to refresh the publication's status.
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "create", "patch", "delete"]
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies", "ingresses"]
  verbs: ["get", "list", "create", "patch", "delete"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["get", "list", "create", "patch", "delete"]
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "list", "create", "patch", "delete"]
- apiGroups: ["gateway.networking.k8s.io"]
  resources: ["httproutes"]
  verbs: ["get", "list", "create", "patch", "delete"]
- apiGroups: ["traefik.io"]
  resources: ["middlewares"]
  verbs: ["get", "list", "create", "patch", "delete"]
# Alerts and scraping, only where the Prometheus Operator's CRDs exist.
- apiGroups: ["monitoring.coreos.com"]
  resources: ["podmonitors", "prometheusrules"]
  verbs: ["get", "list", "create", "patch", "delete"]
{{- end }}

{{/* Cluster-wide reads of kopf: it watches CRDs to notice resources appearing or changing. */}}
{{- define "difusor.scanRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if .Values.watchNamespaces }}
# With a list of namespaces kopf lists and watches them, to start watching one when it appears.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end }}

{{/* A CRD from files/crds/ (a copy of crds/, kept in sync by `make manifests`). */}}
{{- define "difusor.crd" -}}
{{- $crd := .root.Files.Get (printf "files/crds/%s" .file) | fromYaml }}
{{- if not $crd.spec }}
{{- fail (printf "files/crds/%s is missing or empty: run `make manifests`" .file) }}
{{- end }}
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {{ $crd.metadata.name }}
  labels:
    {{- include "difusor.commonLabels" .root | nindent 4 }}
  {{- if .root.Values.crds.keep }}
  annotations:
    helm.sh/resource-policy: keep
  {{- end }}
spec:
  {{- toYaml $crd.spec | nindent 2 }}
{{- end }}
