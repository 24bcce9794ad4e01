package api

// LabelSource marks an object that a source other than `fogmesh apply`
// keeps (metadata.labels): the control plane changes and deletes such
// objects only for their source, and refuses an applied object of the
// same key (and the source's object where an applied one is there
// first), reporting the conflict instead of resolving it silently.
const LabelSource = "fogmesh.io/source"

// SourceKubernetes is LabelSource's value on objects mapped from a
// Kubernetes API (internal/kube).
const SourceKubernetes = "kubernetes"

// LabelHeadless marks a service mapped from a headless Kubernetes Service
// (clusterIP: None): its endpoints are the pods', and agents bind no
// virtual IP for it; their DNS answers its names with the ready pods'
// addresses instead.
const LabelHeadless = "fogmesh.io/headless"

// FromSource reports whether m is kept by source (LabelSource).
func FromSource(m Meta, source string) bool { return m.Labels[LabelSource] == source }
