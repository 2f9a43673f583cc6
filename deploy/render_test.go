package deploy

// The safe rollout: what the shipped manifests and chart install by
// default. A default install must change no node (no DaemonSet, no host
// path, no privileged or host-namespace pod), need no CRD beyond the core
// API (no ServiceMonitor), list every upstream gatehouse knows, and judge
// images in audit mode; the node-hosts DaemonSet and the ServiceMonitor
// come only with the opt-in pieces.

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"github.com/gatehouse/gatehouse/config"
)

// kustomizeOverlay renders an overlay of deploy/kubernetes with the given
// components (directories under deploy/kubernetes, in order), the way
// docs/kubernetes.md tells a user to write one.
func kustomizeOverlay(t *testing.T, components ...string) manifests {
	t.Helper()
	base, err := filepath.Abs("kubernetes")
	if err != nil {
		t.Fatal(err)
	}
	overlay := t.TempDir()
	// kustomize takes only relative paths to bases and components.
	rel, err := filepath.Rel(overlay, base)
	if err != nil {
		t.Fatal(err)
	}
	kust := fmt.Sprintf("resources: [%q]\ncomponents:\n", rel)
	for _, c := range components {
		kust += fmt.Sprintf("  - %q\n", filepath.Join(rel, c))
	}
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(kust), 0o644); err != nil {
		t.Fatal(err)
	}
	return kustomizeBuildDir(t, overlay)
}

// podSpecs returns the pod template of every workload, by "Kind name".
func podSpecs(m manifests) map[string]corev1.PodSpec {
	pods := map[string]corev1.PodSpec{}
	for _, o := range m {
		switch w := o.typed.(type) {
		case *appsv1.StatefulSet:
			pods[o.kind+" "+o.name] = w.Spec.Template.Spec
		case *appsv1.Deployment:
			pods[o.kind+" "+o.name] = w.Spec.Template.Spec
		case *appsv1.DaemonSet:
			pods[o.kind+" "+o.name] = w.Spec.Template.Spec
		}
	}
	return pods
}

// gatehousePod returns the pod template of gatehouse itself (its
// StatefulSet, or the Deployment of a shared-storage install).
func gatehousePod(t *testing.T, m manifests) corev1.PodSpec {
	t.Helper()
	for _, kind := range []string{"StatefulSet", "Deployment"} {
		if objs := m.byKind(kind); len(objs) == 1 {
			return podSpecs(objs)[kind+" "+objs[0].name]
		}
	}
	t.Fatal("no gatehouse StatefulSet or Deployment")
	return corev1.PodSpec{}
}

// parseGatehouseConfig runs gatehouse's parser on the gatehouse.yaml the
// pod reads: with shared storage, with the Secret files it would mount.
func parseGatehouseConfig(t *testing.T, m manifests) *config.Config {
	t.Helper()
	pod := gatehousePod(t, m)
	if len(m.byKind("Deployment")) != 0 {
		cfg, _ := parseWithPodFiles(t, m, pod, "10.0.0.7")
		return cfg
	}
	cfg, err := config.Parse([]byte(gatehouseConfigText(t, m, pod)))
	if err != nil {
		t.Fatalf("gatehouse rejects the rendered gatehouse.yaml: %v", err)
	}
	return cfg
}

// checkNothingOnNodes asserts that no object of m writes on a node or
// needs node-level privileges, and that nothing needs a CRD.
func checkNothingOnNodes(t *testing.T, m manifests) {
	t.Helper()
	for _, kind := range []string{"DaemonSet", "ServiceMonitor"} {
		for _, o := range m.byKind(kind) {
			t.Errorf("%s %s (from %s) is installed by default", kind, o.name, o.source)
		}
	}
	pods := podSpecs(m)
	if len(pods) == 0 {
		t.Fatal("no workload rendered")
	}
	for name, pod := range pods {
		if pod.HostNetwork || pod.HostPID || pod.HostIPC {
			t.Errorf("%s: hostNetwork %v, hostPID %v, hostIPC %v; want none", name, pod.HostNetwork, pod.HostPID, pod.HostIPC)
		}
		for _, v := range pod.Volumes {
			if v.HostPath != nil {
				t.Errorf("%s: volume %s mounts host path %s", name, v.Name, v.HostPath.Path)
			}
		}
		containers := slices.Concat(pod.InitContainers, pod.Containers)
		for _, ec := range pod.EphemeralContainers {
			containers = append(containers, corev1.Container(ec.EphemeralContainerCommon))
		}
		for _, c := range containers {
			if sc := c.SecurityContext; sc != nil && sc.Privileged != nil && *sc.Privileged {
				t.Errorf("%s: container %s is privileged", name, c.Name)
			}
			if sc := c.SecurityContext; sc != nil && sc.Capabilities != nil && len(sc.Capabilities.Add) != 0 {
				t.Errorf("%s: container %s adds capabilities %v", name, c.Name, sc.Capabilities.Add)
			}
			for _, p := range c.Ports {
				if p.HostPort != 0 {
					t.Errorf("%s: container %s binds host port %d", name, c.Name, p.HostPort)
				}
			}
		}
	}
}

// checkAuditDefault asserts that gatehouse.yaml's catch-all rule (or, with
// none, the built-in one) is in audit mode, and that every upstream of the
// built-in defaults is listed.
func checkAuditDefault(t *testing.T, cfg *config.Config) {
	t.Helper()
	mode := config.DefaultRule().Mode // what applies when no rule matches all
	for _, r := range cfg.Gate.Policy.Rules {
		if len(r.Upstreams) == 0 && len(r.Repositories) == 0 {
			mode = r.Mode
		}
	}
	if mode != config.ModeAudit {
		t.Errorf("the default rule's mode is %q, want %q: a fresh install must serve every image and show what it would deny", mode, config.ModeAudit)
	}
	var names []string
	for _, u := range cfg.Upstreams {
		names = append(names, u.Name)
	}
	for _, u := range config.Default().Upstreams {
		if !slices.Contains(names, u.Name) {
			t.Errorf("upstream %s of the built-in defaults is not listed (upstreams %v)", u.Name, names)
		}
	}
}

// namespaceEnforce returns the pod-security enforce level of the Namespace.
func namespaceEnforce(t *testing.T, m manifests) string {
	t.Helper()
	return m.one(t, "Namespace").typed.(*corev1.Namespace).Labels["pod-security.kubernetes.io/enforce"]
}

// The default install (kubectl apply -k deploy/kubernetes, helm install
// with the chart's values, and helm with shared storage) writes nothing on
// nodes, needs no Prometheus operator, and judges in audit mode.
func TestDefaultInstallChangesNoNode(t *testing.T) {
	for _, tc := range []struct {
		name   string
		render func(*testing.T) manifests
	}{
		{"kustomize deploy/kubernetes", kustomizeBuild},
		{"helm defaults", func(t *testing.T) manifests { return helmRenderHA(t, nil) }},
		{"helm sharedStorage.enabled", func(t *testing.T) manifests { return helmRenderHA(t, sharedValues(nil)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.render(t)
			checkNothingOnNodes(t, m)
			checkAuditDefault(t, parseGatehouseConfig(t, m))
		})
	}
	// The plain manifests' namespace admits nothing that could touch a node.
	if level := namespaceEnforce(t, kustomizeBuild(t)); level != "restricted" {
		t.Errorf("namespace pod-security enforce = %q, want restricted", level)
	}
}

// The opt-in components render what they used to be part of the default:
// node-hosts adds the DaemonSet (and lets the namespace admit its host
// path), servicemonitor adds the ServiceMonitor; each only that.
func TestKustomizeOptInComponents(t *testing.T) {
	all := kustomizeOverlay(t, "node-hosts", "servicemonitor")
	checkGatehouse(t, all, true)
	svc := all.one(t, "Service").typed.(*corev1.Service)
	checkNodeHosts(t, all, fmt.Sprintf("http://%s:5000", svc.Spec.ClusterIP))
	if level := namespaceEnforce(t, all); level != "privileged" {
		t.Errorf("with node-hosts, namespace pod-security enforce = %q, want privileged (the DaemonSet mounts a host path)", level)
	}
	for _, o := range all {
		if o.kind == "Namespace" {
			continue
		}
		if ns := o.raw["metadata"].(map[string]any)["namespace"]; ns != "gatehouse" {
			t.Errorf("%s %s: namespace %v, want gatehouse", o.kind, o.name, ns)
		}
	}
	if want, got := len(kustomizeBuild(t))+3, len(all); got != want {
		t.Errorf("both components render %d objects, want the default's and 3 (DaemonSet, its ConfigMap, ServiceMonitor): %d", got, want)
	}

	sm := kustomizeOverlay(t, "servicemonitor")
	checkGatehouse(t, sm, true)
	if ds := sm.byKind("DaemonSet"); len(ds) != 0 {
		t.Error("the servicemonitor component renders a DaemonSet")
	}
	if level := namespaceEnforce(t, sm); level != "restricted" {
		t.Errorf("without node-hosts, namespace pod-security enforce = %q, want restricted", level)
	}
}

// helm install prints where the rollout stands: the rules in audit and, with
// no node-hosts DaemonSet, that no node pulls through gatehouse yet.
func TestHelmNotesRolloutOrder(t *testing.T) {
	for _, tc := range []struct {
		name   string
		values map[string]any
		want   []string
	}{
		{"defaults", nil, []string{"audit mode", "kubernetes, default", "No node pulls through gatehouse yet", "_default last"}},
		// Turned on without naming registries: one registry, never
		// _default at once (per registry first).
		{"node-hosts on", map[string]any{"nodeHostsDaemonSet": map[string]any{"enabled": true}, "service": map[string]any{"clusterIP": "10.96.0.50"}},
			[]string{"writes containerd hosts.toml for docker.io on every", "Going back"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rendered, err := helmRenderFiles(t, tc.values)
			if err != nil {
				t.Fatal(err)
			}
			notes := rendered["gatehouse/templates/NOTES.txt"]
			for _, w := range tc.want {
				if !strings.Contains(notes, w) {
					t.Errorf("NOTES.txt lacks %q:\n%s", w, notes)
				}
			}
		})
	}
}
