package deploy

// Checks of the Kubernetes manifests (deploy/kubernetes, rendered with
// kustomize's own library), the Helm chart (deploy/helm/gatehouse, rendered
// with Helm's library), the containerd / CRI-O files (deploy/containerd)
// and the Dockerfile. Every object is decoded strictly into its typed
// Kubernetes API struct, so an unknown or misplaced field fails.

import (
	"bytes"
	"debug/elf"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/pelletier/go-toml/v2"
	"helm.sh/helm/v4/pkg/chart/common"
	chartutil "helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/gatehouse/gatehouse/config"
)

// object is one manifest, decoded strictly into its typed form.
type object struct {
	source     string // file or template that produced it
	apiVersion string
	kind       string
	name       string
	raw        map[string]any
	typed      any
}

// manifests holds the objects of one rendering.
type manifests []object

func (m manifests) byKind(kind string) []object {
	var out []object
	for _, o := range m {
		if o.kind == kind {
			out = append(out, o)
		}
	}
	return out
}

func (m manifests) one(t *testing.T, kind string) object {
	t.Helper()
	objs := m.byKind(kind)
	if len(objs) != 1 {
		t.Fatalf("want exactly one %s, got %d", kind, len(objs))
	}
	return objs[0]
}

// strictDecode decodes one YAML document into v and fails on unknown
// fields (JSON keys that the typed struct does not have).
func strictDecode(doc []byte, v any) error {
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	// sigs.k8s.io/yaml's strict mode also catches duplicate keys.
	return yaml.UnmarshalStrict(doc, v)
}

// typedFor maps apiVersion/kind to the Go type the object must decode into.
func typedFor(apiVersion, kind string) (any, bool) {
	switch apiVersion + "/" + kind {
	case "v1/Namespace":
		return &corev1.Namespace{}, true
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}, true
	case "v1/Service":
		return &corev1.Service{}, true
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}, true
	case "apps/v1/StatefulSet":
		return &appsv1.StatefulSet{}, true
	case "apps/v1/Deployment":
		return &appsv1.Deployment{}, true
	case "apps/v1/DaemonSet":
		return &appsv1.DaemonSet{}, true
	case "policy/v1/PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}, true
	case "monitoring.coreos.com/v1/ServiceMonitor":
		return &serviceMonitor{}, true
	}
	return nil, false
}

// serviceMonitor is the part of the Prometheus operator's ServiceMonitor
// these manifests use; unknown fields fail like for the core types.
type serviceMonitor struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string            `json:"name"`
		Namespace string            `json:"namespace,omitempty"`
		Labels    map[string]string `json:"labels,omitempty"`
	} `json:"metadata"`
	Spec struct {
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		NamespaceSelector *struct {
			MatchNames []string `json:"matchNames,omitempty"`
			Any        bool     `json:"any,omitempty"`
		} `json:"namespaceSelector,omitempty"`
		Endpoints []struct {
			Port          string `json:"port"`
			Path          string `json:"path,omitempty"`
			Interval      string `json:"interval,omitempty"`
			ScrapeTimeout string `json:"scrapeTimeout,omitempty"`
			Scheme        string `json:"scheme,omitempty"`
			// The operator's TLSConfig (SafeTLSConfig plus file paths).
			TLSConfig *struct {
				CA                 map[string]any `json:"ca,omitempty"`
				Cert               map[string]any `json:"cert,omitempty"`
				KeySecret          map[string]any `json:"keySecret,omitempty"`
				ServerName         string         `json:"serverName,omitempty"`
				InsecureSkipVerify bool           `json:"insecureSkipVerify,omitempty"`
				CAFile             string         `json:"caFile,omitempty"`
				CertFile           string         `json:"certFile,omitempty"`
				KeyFile            string         `json:"keyFile,omitempty"`
			} `json:"tlsConfig,omitempty"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// decodeAll splits a multi-document YAML stream and decodes every object.
func decodeAll(t *testing.T, source string, stream []byte) manifests {
	t.Helper()
	var out manifests
	for i, doc := range splitYAML(stream) {
		var raw map[string]any
		if err := yaml.Unmarshal(doc, &raw); err != nil {
			t.Fatalf("%s: document %d: %v", source, i, err)
		}
		if len(raw) == 0 {
			continue // only comments
		}
		apiVersion, _ := raw["apiVersion"].(string)
		kind, _ := raw["kind"].(string)
		meta, _ := raw["metadata"].(map[string]any)
		name, _ := meta["name"].(string)
		if apiVersion == "" || kind == "" || name == "" {
			t.Fatalf("%s: document %d lacks apiVersion, kind or metadata.name", source, i)
		}
		typed, ok := typedFor(apiVersion, kind)
		if !ok {
			t.Fatalf("%s: %s %s: no schema for apiVersion %s", source, kind, name, apiVersion)
		}
		if err := strictDecode(doc, typed); err != nil {
			t.Fatalf("%s: %s %s does not match the %s schema: %v", source, kind, name, apiVersion, err)
		}
		out = append(out, object{source: source, apiVersion: apiVersion, kind: kind, name: name, raw: raw, typed: typed})
	}
	return out
}

func splitYAML(stream []byte) [][]byte {
	var docs [][]byte
	var cur []string
	for line := range strings.SplitSeq(string(stream), "\n") {
		if strings.TrimRight(line, " \t\r") == "---" {
			docs = append(docs, []byte(strings.Join(cur, "\n")))
			cur = nil
			continue
		}
		cur = append(cur, line)
	}
	return append(docs, []byte(strings.Join(cur, "\n")))
}

// kustomizeBuild renders deploy/kubernetes with kustomize's library (what
// `kubectl apply -k` runs).
func kustomizeBuild(t *testing.T) manifests {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	res, err := k.Run(filesys.MakeFsOnDisk(), "kubernetes")
	if err != nil {
		t.Fatalf("kustomize build deploy/kubernetes: %v", err)
	}
	out, err := res.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	return decodeAll(t, "kustomize build deploy/kubernetes", out)
}

// helmRender renders deploy/helm/gatehouse like `helm template` with the
// given values over values.yaml.
func helmRender(t *testing.T, values map[string]any) manifests {
	t.Helper()
	rendered, err := helmRenderFiles(t, values)
	if err != nil {
		t.Fatalf("render chart: %v", err)
	}
	names := make([]string, 0, len(rendered))
	for name := range rendered {
		names = append(names, name)
	}
	slices.Sort(names)
	var out manifests
	for _, name := range names {
		if !strings.HasSuffix(name, ".yaml") || strings.TrimSpace(rendered[name]) == "" {
			continue
		}
		out = append(out, decodeAll(t, name, []byte(rendered[name]))...)
	}
	return out
}

// helmRenderFiles renders the chart and returns each template's text, or
// the error a `fail` or `required` in a template gives.
func helmRenderFiles(t *testing.T, values map[string]any) (map[string]string, error) {
	t.Helper()
	chrt, err := loader.LoadDir("helm/gatehouse")
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	if err := chrt.Validate(); err != nil {
		t.Fatalf("chart metadata: %v", err)
	}
	vals, err := chartutil.ToRenderValues(chrt, values, common.ReleaseOptions{
		Name: "gatehouse", Namespace: "gatehouse", IsInstall: true, Revision: 1,
	}, nil)
	if err != nil {
		t.Fatalf("chart values: %v", err)
	}
	return engine.Render(chrt, vals)
}

// checkGatehouse asserts what every rendering must get right: the
// StatefulSet's security posture, probes, resources and volume; the
// ConfigMap's gatehouse.yaml passing gatehouse's own parser; the Service
// port; and the ServiceMonitor naming a port of that Service.
func checkGatehouse(t *testing.T, m manifests, wantServiceMonitor bool) {
	t.Helper()
	sts := m.one(t, "StatefulSet").typed.(*appsv1.StatefulSet)
	if sts.Spec.Replicas == nil || *sts.Spec.Replicas != 1 {
		t.Errorf("StatefulSet replicas = %v, want 1", sts.Spec.Replicas)
	}
	pod := sts.Spec.Template.Spec
	if psc := pod.SecurityContext; psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot ||
		psc.RunAsUser == nil || *psc.RunAsUser != 65532 || psc.FSGroup == nil || *psc.FSGroup != 65532 ||
		psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("pod securityContext = %+v, want runAsNonRoot, runAsUser/fsGroup 65532, seccomp RuntimeDefault", psc)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("gatehouse pod has %d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot ||
		sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 ||
		sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("container securityContext = %+v, want runAsNonRoot, readOnlyRootFilesystem, no privilege escalation, drop ALL, seccomp RuntimeDefault", sc)
	}
	probe := func(what string, p *corev1.Probe, path string) {
		if p == nil || p.HTTPGet == nil {
			t.Errorf("%s probe missing", what)
			return
		}
		if p.HTTPGet.Path != path || p.HTTPGet.Port.String() != "http" {
			t.Errorf("%s probe = %s on port %s, want %s on port http", what, p.HTTPGet.Path, p.HTTPGet.Port.String(), path)
		}
	}
	probe("liveness", c.LivenessProbe, "/healthz")
	probe("readiness", c.ReadinessProbe, "/readyz")
	probe("startup", c.StartupProbe, "/healthz")
	if !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "http" && p.ContainerPort == 5000 }) {
		t.Errorf("container ports = %+v, want http 5000", c.Ports)
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if _, ok := c.Resources.Requests[r]; !ok {
			t.Errorf("no %s request", r)
		}
	}
	if _, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok {
		t.Error("no memory limit")
	}
	if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "GATEHOUSE_DATA_DIR" && e.Value == "/var/lib/gatehouse" }) {
		t.Errorf("env = %+v, want GATEHOUSE_DATA_DIR=/var/lib/gatehouse", c.Env)
	}
	mounts := map[string]string{}
	for _, vm := range c.VolumeMounts {
		mounts[vm.MountPath] = vm.Name
	}
	if mounts["/var/lib/gatehouse"] != "data" || mounts["/etc/gatehouse"] == "" || mounts["/tmp"] == "" {
		t.Errorf("volume mounts = %v, want data on /var/lib/gatehouse, config on /etc/gatehouse, a writable /tmp", mounts)
	}
	if len(sts.Spec.VolumeClaimTemplates) != 1 || sts.Spec.VolumeClaimTemplates[0].Name != "data" {
		t.Fatalf("volumeClaimTemplates = %+v, want one named data", sts.Spec.VolumeClaimTemplates)
	}
	if _, ok := sts.Spec.VolumeClaimTemplates[0].Spec.Resources.Requests[corev1.ResourceStorage]; !ok {
		t.Error("PVC template requests no storage")
	}
	if !slices.Contains(c.Args, "--config") {
		t.Fatalf("args = %v, want serve --config FILE", c.Args)
	}
	configPath := c.Args[slices.Index(c.Args, "--config")+1]
	// A command run with kubectl exec reads the file serve reads.
	if !slices.ContainsFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "GATEHOUSE_CONFIG" && e.Value == configPath }) {
		t.Errorf("env = %+v, want GATEHOUSE_CONFIG=%s (the --config of serve)", c.Env, configPath)
	}

	// The config file comes from the ConfigMap mounted on its directory.
	var cmName string
	for _, v := range pod.Volumes {
		if v.Name == mounts[filepath.Dir(configPath)] && v.ConfigMap != nil {
			cmName = v.ConfigMap.Name
		}
	}
	var cfgText string
	for _, o := range m.byKind("ConfigMap") {
		if o.name == cmName {
			cfgText = o.typed.(*corev1.ConfigMap).Data[filepath.Base(configPath)]
		}
	}
	if cfgText == "" {
		t.Fatalf("no ConfigMap %q with key %s for --config %s", cmName, filepath.Base(configPath), configPath)
	}
	cfg, err := config.Parse([]byte(cfgText))
	if err != nil {
		t.Fatalf("ConfigMap %s %s: gatehouse rejects it: %v", cmName, filepath.Base(configPath), err)
	}
	if cfg.DataDir != "/var/lib/gatehouse" || cfg.Listen != ":5000" {
		t.Errorf("config dataDir %q listen %q, want /var/lib/gatehouse and :5000", cfg.DataDir, cfg.Listen)
	}
	if len(cfg.Gate.Policy.Rules) == 0 {
		t.Error("config example has no policy rules")
	}
	if got, max := int64(cfg.Server.ShutdownTimeout.D().Seconds()), *pod.TerminationGracePeriodSeconds; got >= max {
		t.Errorf("server.shutdownTimeout %ds is not below terminationGracePeriodSeconds %d", got, max)
	}

	// The Service selects the pod and exposes 5000 as "http".
	var svc *corev1.Service
	for _, o := range m.byKind("Service") {
		s := o.typed.(*corev1.Service)
		if selects(s.Spec.Selector, sts.Spec.Template.Labels) {
			svc = s
		}
	}
	if svc == nil {
		t.Fatal("no Service selects the gatehouse pod")
	}
	if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == "http" && p.Port == 5000 }) {
		t.Errorf("Service ports = %+v, want http 5000", svc.Spec.Ports)
	}
	if !selects(sts.Spec.Selector.MatchLabels, sts.Spec.Template.Labels) {
		t.Error("StatefulSet selector does not match its pod template")
	}

	sms := m.byKind("ServiceMonitor")
	if !wantServiceMonitor {
		if len(sms) != 0 {
			t.Errorf("ServiceMonitor rendered although disabled")
		}
		return
	}
	if len(sms) != 1 {
		t.Fatalf("want one ServiceMonitor, got %d", len(sms))
	}
	sm := sms[0].typed.(*serviceMonitor)
	if !selects(sm.Spec.Selector.MatchLabels, svc.Labels) {
		t.Errorf("ServiceMonitor selector %v does not select the Service (labels %v)", sm.Spec.Selector.MatchLabels, svc.Labels)
	}
	if len(sm.Spec.Endpoints) == 0 {
		t.Fatal("ServiceMonitor has no endpoints")
	}
	for _, ep := range sm.Spec.Endpoints {
		if !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Name == ep.Port }) {
			t.Errorf("ServiceMonitor endpoint port %q is not a port of Service %s", ep.Port, svc.Name)
		}
		if ep.Path != "/metrics" {
			t.Errorf("ServiceMonitor path %q, want /metrics", ep.Path)
		}
	}
}

// selects reports whether every selector label is among labels.
func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// checkNodeHosts asserts the DaemonSet writes hosts.toml files whose
// server is gatehouse (wantServer) into the node's certs.d, and that each
// file has the [host] table containerd 1.6 requires.
func checkNodeHosts(t *testing.T, m manifests, wantServer string) {
	t.Helper()
	ds := m.one(t, "DaemonSet").typed.(*appsv1.DaemonSet)
	pod := ds.Spec.Template.Spec
	if !selects(ds.Spec.Selector.MatchLabels, ds.Spec.Template.Labels) {
		t.Error("DaemonSet selector does not match its pod template")
	}
	var hostPath, cmName string
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			hostPath = v.HostPath.Path
		}
		if v.ConfigMap != nil {
			cmName = v.ConfigMap.Name
		}
	}
	if hostPath != "/etc/containerd/certs.d" {
		t.Errorf("DaemonSet hostPath = %q, want /etc/containerd/certs.d", hostPath)
	}
	for _, c := range pod.Containers {
		sc := c.SecurityContext
		if sc == nil || sc.Privileged != nil && *sc.Privileged || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
			sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
			t.Errorf("DaemonSet container %s securityContext = %+v, want unprivileged, read-only root, drop ALL", c.Name, sc)
		}
		if _, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok {
			t.Errorf("DaemonSet container %s has no memory limit", c.Name)
		}
	}
	var cm *corev1.ConfigMap
	for _, o := range m.byKind("ConfigMap") {
		if o.name == cmName {
			cm = o.typed.(*corev1.ConfigMap)
		}
	}
	if cm == nil {
		t.Fatalf("DaemonSet mounts ConfigMap %q, which is not rendered", cmName)
	}
	if _, ok := cm.Data["_default.hosts.toml"]; !ok {
		t.Errorf("node hosts ConfigMap keys %v lack _default.hosts.toml", slices.Collect(mapKeys(cm.Data)))
	}
	for key, text := range cm.Data {
		if !strings.HasSuffix(key, ".hosts.toml") {
			t.Errorf("node hosts ConfigMap key %q: the DaemonSet only copies *.hosts.toml", key)
		}
		checkHostsTOML(t, "ConfigMap "+cmName+" "+key, []byte(text), wantServer)
	}
}

func mapKeys(m map[string]string) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// hostsTOML is the part of containerd's hosts.toml schema gatehouse's files
// use: the top-level fields configure `server`, each [host] table a mirror.
type hostsTOML struct {
	Server string              `toml:"server"`
	CA     any                 `toml:"ca"`
	Header map[string]any      `toml:"header"`
	Host   map[string]hostTOML `toml:"host"`
}

type hostTOML struct {
	Capabilities []string       `toml:"capabilities"`
	SkipVerify   bool           `toml:"skip_verify"`
	CA           any            `toml:"ca"`
	Header       map[string]any `toml:"header"`
}

// checkHostsTOML parses a containerd hosts.toml strictly, asserts that
// server is gatehouse and that a [host] entry for it pulls and resolves, and
// returns what it parsed.
func checkHostsTOML(t *testing.T, source string, data []byte, wantServer string) hostsTOML {
	t.Helper()
	var h hostsTOML
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&h); err != nil {
		t.Errorf("%s: %v", source, err)
		return h
	}
	if h.Server != wantServer {
		t.Errorf("%s: server = %q, want gatehouse %q (containerd falls back to server on any mirror error)", source, h.Server, wantServer)
	}
	if len(h.Host) == 0 {
		t.Errorf("%s: no [host.\"...\"] table (containerd 1.6 ignores the file)", source)
	}
	for name, host := range h.Host {
		if name != wantServer {
			t.Errorf("%s: host %q is not gatehouse %q", source, name, wantServer)
		}
		if !slices.Contains(host.Capabilities, "pull") || !slices.Contains(host.Capabilities, "resolve") {
			t.Errorf("%s: host %q capabilities %v, want pull and resolve", source, name, host.Capabilities)
		}
	}
	return h
}

// The default kustomization installs gatehouse alone; the node-hosts
// DaemonSet and the ServiceMonitor are opt-in components
// (TestKustomizeOptInComponents, TestDefaultInstallChangesNoNode).
func TestKustomizeManifests(t *testing.T) {
	m := kustomizeBuild(t)
	for _, kind := range []string{"Namespace", "ConfigMap", "StatefulSet", "Service"} {
		m.one(t, kind)
	}
	if len(m) != 4 {
		t.Errorf("kustomize build deploy/kubernetes renders %d objects, want 4 (Namespace, ConfigMap, Service, StatefulSet)", len(m))
	}
	for _, o := range m {
		if o.kind == "Namespace" {
			continue
		}
		meta := o.raw["metadata"].(map[string]any)
		if meta["namespace"] != "gatehouse" {
			t.Errorf("%s %s: namespace %v, want gatehouse", o.kind, o.name, meta["namespace"])
		}
	}
	checkGatehouse(t, m, false)
	// Nodes reach gatehouse on the Service's fixed ClusterIP.
	svc := m.one(t, "Service").typed.(*corev1.Service)
	if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
		t.Fatalf("Service clusterIP = %q, want a fixed address the nodes' hosts.toml names", svc.Spec.ClusterIP)
	}

	// Every file of the kustomization and of each component is listed in
	// its directory's kustomization.yaml (as a resource or a patch); no
	// manifest is left out by mistake.
	dirs, _ := filepath.Glob("kubernetes/*/kustomization.yaml")
	dirs = append(dirs, "kubernetes/kustomization.yaml")
	for _, kf := range dirs {
		k, err := os.ReadFile(kf)
		if err != nil {
			t.Fatal(err)
		}
		files, _ := filepath.Glob(filepath.Join(filepath.Dir(kf), "*.yaml"))
		for _, f := range files {
			if filepath.Base(f) == "kustomization.yaml" {
				continue
			}
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			decodeAll(t, f, data) // strict schema check per file too
			if !bytes.Contains(k, []byte("- "+filepath.Base(f))) && !bytes.Contains(k, []byte("path: "+filepath.Base(f))) {
				t.Errorf("%s is not listed in %s", f, kf)
			}
		}
	}
}

func TestHelmChartDefaults(t *testing.T) {
	m := helmRender(t, nil)
	checkGatehouse(t, m, false)
	if ds := m.byKind("DaemonSet"); len(ds) != 0 {
		t.Error("node hosts DaemonSet rendered although disabled")
	}
	sts := m.one(t, "StatefulSet").typed.(*appsv1.StatefulSet)
	if img := sts.Spec.Template.Spec.Containers[0].Image; img != "ghcr.io/gatehouse/gatehouse:0.1.0" {
		t.Errorf("image = %q, want the chart's appVersion tag", img)
	}
	if sc := sts.Spec.VolumeClaimTemplates[0].Spec.StorageClassName; sc != nil {
		t.Errorf("storageClassName = %q, want unset (cluster default)", *sc)
	}
}

func TestHelmChartAllEnabled(t *testing.T) {
	m := helmRender(t, map[string]any{
		"serviceMonitor":     map[string]any{"enabled": true, "labels": map[string]any{"release": "kube-prometheus-stack"}},
		"nodeHostsDaemonSet": map[string]any{"enabled": true, "registries": []any{"_default", "docker.io"}},
		"service":            map[string]any{"clusterIP": "10.96.0.50"},
		"persistence":        map[string]any{"size": "200Gi", "storageClass": "fast-ssd"},
		"image":              map[string]any{"tag": "1.2.3"},
		"config": map[string]any{
			"cache": map[string]any{"maxSize": "150GiB"},
		},
	})
	checkGatehouse(t, m, true)
	checkNodeHosts(t, m, "http://10.96.0.50:5000")
	sts := m.one(t, "StatefulSet").typed.(*appsv1.StatefulSet)
	pvc := sts.Spec.VolumeClaimTemplates[0].Spec
	if pvc.StorageClassName == nil || *pvc.StorageClassName != "fast-ssd" {
		t.Errorf("storageClassName = %v, want fast-ssd", pvc.StorageClassName)
	}
	if q := pvc.Resources.Requests[corev1.ResourceStorage]; q.String() != "200Gi" {
		t.Errorf("PVC size = %s, want 200Gi", q.String())
	}
	if img := sts.Spec.Template.Spec.Containers[0].Image; img != "ghcr.io/gatehouse/gatehouse:1.2.3" {
		t.Errorf("image = %q", img)
	}
	cm := m.byKind("ConfigMap")
	var cfgText string
	for _, o := range cm {
		if d, ok := o.typed.(*corev1.ConfigMap).Data["gatehouse.yaml"]; ok {
			cfgText = d
		}
	}
	cfg, err := config.Parse([]byte(cfgText))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Cache.MaxSize != 150<<30 {
		t.Errorf("config.cache.maxSize = %d, want the value override (150GiB)", cfg.Cache.MaxSize)
	}
	if sm := m.one(t, "ServiceMonitor").typed.(*serviceMonitor); sm.Metadata.Labels["release"] != "kube-prometheus-stack" {
		t.Errorf("ServiceMonitor labels = %v, want the extra release label", sm.Metadata.Labels)
	}

	// An explicit endpoint wins over the ClusterIP.
	m = helmRender(t, map[string]any{
		"nodeHostsDaemonSet": map[string]any{"enabled": true, "endpoint": "http://gatehouse.internal:5000", "registries": []any{"_default", "docker.io", "ghcr.io"}},
	})
	checkNodeHosts(t, m, "http://gatehouse.internal:5000")
	for _, o := range m.byKind("ConfigMap") {
		if d := o.typed.(*corev1.ConfigMap).Data; strings.HasSuffix(o.name, "-node-hosts") && len(d) != 3 {
			t.Errorf("node hosts ConfigMap has %d files, want one per registry listed (3)", len(d))
		}
	}
}

func TestHelmChartNodeHostsNeedsAddress(t *testing.T) {
	chrt, err := loader.LoadDir("helm/gatehouse")
	if err != nil {
		t.Fatal(err)
	}
	vals, err := chartutil.ToRenderValues(chrt, map[string]any{"nodeHostsDaemonSet": map[string]any{"enabled": true}},
		common.ReleaseOptions{Name: "gatehouse", Namespace: "gatehouse"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := engine.Render(chrt, vals); err == nil || !strings.Contains(err.Error(), "nodes do not resolve cluster DNS") {
		t.Fatalf("render without endpoint or clusterIP: err = %v, want the required-value error", err)
	}
}

func TestContainerdHostsFiles(t *testing.T) {
	files, err := filepath.Glob("containerd/*/hosts.toml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no hosts.toml under deploy/containerd: %v", err)
	}
	if !slices.Contains(files, filepath.Join("containerd", "_default", "hosts.toml")) {
		t.Errorf("no _default/hosts.toml among %v", files)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		checkHostsTOML(t, f, data, "http://gatehouse.internal:5000")
	}
}

func TestRegistriesConf(t *testing.T) {
	data, err := os.ReadFile("containerd/registries.conf")
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		UnqualifiedSearchRegistries []string `toml:"unqualified-search-registries"`
		Registry                    []struct {
			Prefix   string `toml:"prefix"`
			Location string `toml:"location"`
			Insecure bool   `toml:"insecure"`
			Blocked  bool   `toml:"blocked"`
			Mirror   []any  `toml:"mirror"`
		} `toml:"registry"`
	}
	dec := toml.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&conf); err != nil {
		t.Fatal(err)
	}
	if len(conf.Registry) == 0 {
		t.Fatal("no [[registry]] entries")
	}
	for _, r := range conf.Registry {
		if want := "gatehouse.internal:5000/" + r.Prefix; r.Location != want {
			t.Errorf("registry %s: location %q, want gatehouse with the upstream as path prefix %q", r.Prefix, r.Location, want)
		}
		if len(r.Mirror) != 0 {
			t.Errorf("registry %s has mirrors: CRI-O/podman fall back from a mirror silently, bypassing the gate", r.Prefix)
		}
	}
}

// dockerfile is the parsed Dockerfile: instructions in order.
type instruction struct {
	cmd   string   // lower case: from, env, run, ...
	args  []string // the parser's argument list
	flags []string
	orig  string
}

func parseDockerfile(t *testing.T) []instruction {
	t.Helper()
	f, err := os.Open("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		t.Fatalf("parse Dockerfile: %v", err)
	}
	for _, w := range res.Warnings {
		t.Errorf("Dockerfile warning: %s", w.Short)
	}
	var out []instruction
	for _, n := range res.AST.Children {
		in := instruction{cmd: strings.ToLower(n.Value), flags: n.Flags, orig: n.Original}
		for a := n.Next; a != nil; a = a.Next {
			in.args = append(in.args, a.Value)
		}
		out = append(out, in)
	}
	return out
}

func TestDockerfile(t *testing.T) {
	ins := parseDockerfile(t)
	// Split into stages.
	type stage struct {
		from string
		name string
		ins  []instruction
	}
	var stages []*stage
	for _, in := range ins {
		if in.cmd == "from" {
			s := &stage{from: in.args[0]}
			if len(in.args) == 3 && strings.EqualFold(in.args[1], "as") {
				s.name = in.args[2]
			}
			stages = append(stages, s)
			continue
		}
		if len(stages) == 0 {
			if in.cmd != "arg" {
				t.Fatalf("%q before the first FROM", in.orig)
			}
			continue
		}
		stages[len(stages)-1].ins = append(stages[len(stages)-1].ins, in)
	}
	if len(stages) < 2 {
		t.Fatalf("%d stages, want a multi-stage build", len(stages))
	}
	build, final := stages[0], stages[len(stages)-1]

	env := func(s *stage) map[string]string {
		m := map[string]string{}
		for _, in := range s.ins {
			if in.cmd != "env" {
				continue
			}
			// The parser gives name, value, separator triples.
			for i := 0; i+1 < len(in.args); i += 3 {
				m[in.args[i]] = in.args[i+1]
			}
		}
		return m
	}
	be := env(build)
	if be["GOEXPERIMENT"] != "jsonv2" {
		t.Errorf("build stage GOEXPERIMENT = %q, want jsonv2 (Trivy needs encoding/json/v2)", be["GOEXPERIMENT"])
	}
	if be["CGO_ENABLED"] != "0" {
		t.Errorf("build stage CGO_ENABLED = %q, want 0 (static binary)", be["CGO_ENABLED"])
	}
	var buildCmd string
	for _, in := range build.ins {
		if in.cmd == "run" && strings.Contains(strings.Join(in.args, " "), "go build") {
			buildCmd = strings.Join(in.args, " ")
		}
	}
	for _, want := range []string{"-trimpath", `-ldflags "-s -w`, "./cmd/gatehouse"} {
		if !strings.Contains(buildCmd, want) {
			t.Errorf("build command %q lacks %s", buildCmd, want)
		}
	}
	if !strings.Contains(final.from, "static") && !strings.Contains(final.from, "scratch") {
		t.Errorf("final stage FROM %s: want a static/distroless base", final.from)
	}
	if fe := env(final); fe["GATEHOUSE_DATA_DIR"] != "/var/lib/gatehouse" {
		t.Errorf("final stage GATEHOUSE_DATA_DIR = %q, want /var/lib/gatehouse", fe["GATEHOUSE_DATA_DIR"])
	}
	var user, healthcheck, volume, copyFromBuild, entrypoint string
	for _, in := range final.ins {
		switch in.cmd {
		case "user":
			user = in.args[0]
		case "healthcheck":
			healthcheck = strings.Join(in.args, " ")
		case "volume":
			volume = strings.Join(in.args, " ")
		case "entrypoint":
			entrypoint = strings.Join(in.args, " ")
		case "copy":
			if slices.ContainsFunc(in.flags, func(f string) bool { return f == "--from="+build.name }) {
				copyFromBuild += in.orig + "\n"
			}
		}
	}
	uid, _, _ := strings.Cut(user, ":")
	if uid == "" || uid == "0" || uid == "root" {
		t.Errorf("USER %q, want a non-root user", user)
	}
	if !strings.Contains(healthcheck, `gatehouse", "health"`) && !strings.Contains(healthcheck, "gatehouse health") {
		t.Errorf("HEALTHCHECK %q, want `gatehouse health`", healthcheck)
	}
	if strings.Contains(healthcheck, "--url") || strings.Contains(healthcheck, ":5000") {
		t.Errorf("HEALTHCHECK %q hard-codes an address: `gatehouse health` follows the configured listen address", healthcheck)
	}
	if !strings.Contains(volume, "/var/lib/gatehouse") {
		t.Errorf("VOLUME %q, want /var/lib/gatehouse", volume)
	}
	if !strings.Contains(copyFromBuild, "--chown=65532:65532") || !strings.Contains(copyFromBuild, "/var/lib/gatehouse") {
		t.Errorf("the data directory is not copied with the non-root owner: %q", copyFromBuild)
	}
	if !strings.Contains(entrypoint, "gatehouse") {
		t.Errorf("ENTRYPOINT %q, want the gatehouse binary", entrypoint)
	}
}

// TestDockerfileBinary builds the binary the way the Dockerfile does
// (static, trimmed, stripped) and runs it: the image's build step works
// without a Docker engine here.
func TestDockerfileBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the gatehouse binary")
	}
	bin := filepath.Join(t.TempDir(), "gatehouse")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=dockerfile-test", "-o", bin, "./cmd/gatehouse")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOEXPERIMENT=jsonv2")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "gatehouse dockerfile-test" {
		t.Fatalf("gatehouse version: %q, %v", out, err)
	}
	if runtime.GOOS == "linux" {
		// Static: no ELF interpreter (distroless/static has no libc).
		f, err := elf.Open(bin)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Error("binary has an ELF interpreter: not static")
			}
		}
	}
}

// With TLS and client credentials from Secrets, the chart mounts them, points
// gatehouse.yaml at the files, probes over HTTPS and scrapes over HTTPS.
func TestHelmChartAccessControl(t *testing.T) {
	m := helmRender(t, map[string]any{
		"tls":            map[string]any{"secretName": "gatehouse-tls"},
		"auth":           map[string]any{"secretName": "gatehouse-auth", "htpasswdKey": "htpasswd", "apiTokensKey": "api-tokens"},
		"serviceMonitor": map[string]any{"enabled": true, "tlsConfig": map[string]any{"serverName": "gatehouse.internal"}},
		"config":         map[string]any{"server": map[string]any{"tls": map[string]any{"clientCAFile": "/var/run/gatehouse/tls/ca.crt"}}},
	})
	sts := m.one(t, "StatefulSet").typed.(*appsv1.StatefulSet)
	pod := sts.Spec.Template.Spec
	secrets := map[string]string{}
	for _, v := range pod.Volumes {
		if v.Secret != nil {
			secrets[v.Name] = v.Secret.SecretName
		}
	}
	mounts := map[string]string{}
	for _, vm := range pod.Containers[0].VolumeMounts {
		mounts[vm.Name] = vm.MountPath
	}
	if secrets["tls"] != "gatehouse-tls" || secrets["auth"] != "gatehouse-auth" {
		t.Errorf("secret volumes = %v", secrets)
	}
	if mounts["tls"] != "/var/run/gatehouse/tls" || mounts["auth"] != "/var/run/gatehouse/auth" {
		t.Errorf("mounts = %v", mounts)
	}
	c := pod.Containers[0]
	for name, p := range map[string]*corev1.Probe{"startup": c.StartupProbe, "liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Scheme != corev1.URISchemeHTTPS {
			t.Errorf("%s probe does not use HTTPS: %+v", name, p)
		}
	}
	var cfgText string
	for _, o := range m.byKind("ConfigMap") {
		if d, ok := o.typed.(*corev1.ConfigMap).Data["gatehouse.yaml"]; ok {
			cfgText = d
		}
	}
	var cfg struct {
		Server struct {
			ShutdownTimeout string `json:"shutdownTimeout"`
			TLS             struct {
				CertFile, KeyFile, ClientCAFile string
			} `json:"tls"`
			Auth struct {
				Htpasswd, TokensFile, APITokenFile string
			} `json:"auth"`
		} `json:"server"`
	}
	if err := yaml.Unmarshal([]byte(cfgText), &cfg); err != nil {
		t.Fatal(err)
	}
	s := cfg.Server
	if s.TLS.CertFile != "/var/run/gatehouse/tls/tls.crt" || s.TLS.KeyFile != "/var/run/gatehouse/tls/tls.key" || s.TLS.ClientCAFile != "/var/run/gatehouse/tls/ca.crt" {
		t.Errorf("server.tls = %+v", s.TLS)
	}
	if s.Auth.Htpasswd != "/var/run/gatehouse/auth/htpasswd" || s.Auth.APITokenFile != "/var/run/gatehouse/auth/api-tokens" || s.Auth.TokensFile != "" {
		t.Errorf("server.auth = %+v", s.Auth)
	}
	if s.ShutdownTimeout != "30s" {
		t.Errorf("server.shutdownTimeout = %q: the chart's own server settings were lost", s.ShutdownTimeout)
	}
	sm := m.one(t, "ServiceMonitor").raw["spec"].(map[string]any)["endpoints"].([]any)[0].(map[string]any)
	if sm["scheme"] != "https" || sm["tlsConfig"].(map[string]any)["serverName"] != "gatehouse.internal" {
		t.Errorf("ServiceMonitor endpoint = %v, want https with the tlsConfig given", sm)
	}
}
