package deploy

// Checks of the Helm chart with shared storage (sharedStorage.enabled):
// several replicas in a Deployment, blobs in S3, records in PostgreSQL,
// the credentials and the cluster secret from Secrets. Every object is
// decoded strictly into its Kubernetes API type, like the other chart
// tests; the rendered gatehouse.yaml must pass gatehouse's own config
// parser with the Secret files the pod would see.

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"helm.sh/helm/v4/pkg/chart/common"
	chartutil "helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"

	"github.com/gatehouse/gatehouse/config"
)

// sharedValues are the values of a shared-storage install; extra is
// merged over them (one level deep per top-level key).
func sharedValues(extra map[string]any) map[string]any {
	v := map[string]any{
		"sharedStorage": map[string]any{
			"enabled": true,
			"s3": map[string]any{
				"endpoint":       "https://s3.eu-west-1.amazonaws.com",
				"bucket":         "registry-cache",
				"prefix":         "gatehouse",
				"region":         "eu-west-1",
				"existingSecret": "gatehouse-s3",
			},
			"postgres": map[string]any{"existingSecret": "gatehouse-postgres", "dsnKey": "uri"},
			"cluster":  map[string]any{"existingSecret": "gatehouse-cluster"},
		},
	}
	for k, x := range extra {
		if m, ok := x.(map[string]any); ok {
			if base, ok := v[k].(map[string]any); ok {
				for kk, xx := range m {
					base[kk] = xx
				}
				continue
			}
		}
		v[k] = x
	}
	return v
}

// renderChart renders deploy/helm/gatehouse like `helm template`, with
// values.schema.json checked unless skipSchema (`--skip-schema-validation`),
// and returns each template's text or the first error.
func renderChart(t *testing.T, values map[string]any, skipSchema bool) (map[string]string, error) {
	t.Helper()
	chrt, err := loader.LoadDir("helm/gatehouse")
	if err != nil {
		t.Fatalf("load chart: %v", err)
	}
	if err := chrt.Validate(); err != nil {
		t.Fatalf("chart metadata: %v", err)
	}
	vals, err := chartutil.ToRenderValuesWithSchemaValidation(chrt, values, common.ReleaseOptions{
		Name: "gatehouse", Namespace: "gatehouse", IsInstall: true, Revision: 1,
	}, nil, skipSchema)
	if err != nil {
		return nil, err
	}
	return engine.Render(chrt, vals)
}

// typedForHA adds the kinds only shared storage renders to typedFor.
func typedForHA(apiVersion, kind string) (any, bool) {
	switch apiVersion + "/" + kind {
	case "autoscaling/v2/HorizontalPodAutoscaler":
		return &autoscalingv2.HorizontalPodAutoscaler{}, true
	case "networking.k8s.io/v1/NetworkPolicy":
		return &networkingv1.NetworkPolicy{}, true
	}
	return typedFor(apiVersion, kind)
}

// helmRenderHA renders the chart and decodes every object strictly into
// its typed form (the schema check), failing the test on any error.
func helmRenderHA(t *testing.T, values map[string]any) manifests {
	t.Helper()
	rendered, err := renderChart(t, values, false)
	if err != nil {
		t.Fatalf("render chart: %v", err)
	}
	var out manifests
	for _, name := range slices.Sorted(mapKeys(rendered)) {
		if !strings.HasSuffix(name, ".yaml") || strings.TrimSpace(rendered[name]) == "" {
			continue
		}
		for i, doc := range splitYAML([]byte(rendered[name])) {
			var raw map[string]any
			if err := yaml.Unmarshal(doc, &raw); err != nil {
				t.Fatalf("%s: document %d: %v", name, i, err)
			}
			if len(raw) == 0 {
				continue
			}
			apiVersion, _ := raw["apiVersion"].(string)
			kind, _ := raw["kind"].(string)
			meta, _ := raw["metadata"].(map[string]any)
			objName, _ := meta["name"].(string)
			if apiVersion == "" || kind == "" || objName == "" {
				t.Fatalf("%s: document %d lacks apiVersion, kind or metadata.name", name, i)
			}
			typed, ok := typedForHA(apiVersion, kind)
			if !ok {
				t.Fatalf("%s: %s %s: no schema for apiVersion %s", name, kind, objName, apiVersion)
			}
			if err := strictDecode(doc, typed); err != nil {
				t.Fatalf("%s: %s %s does not match the %s schema: %v", name, kind, objName, apiVersion, err)
			}
			if ns, _ := meta["namespace"].(string); ns != "gatehouse" {
				t.Errorf("%s %s: namespace %q, want the release's", kind, objName, ns)
			}
			out = append(out, object{source: name, apiVersion: apiVersion, kind: kind, name: objName, raw: raw, typed: typed})
		}
	}
	return out
}

// gatehouseConfigText returns the ConfigMap text of the pod's --config file.
func gatehouseConfigText(t *testing.T, m manifests, pod corev1.PodSpec) string {
	t.Helper()
	c := pod.Containers[0]
	i := slices.Index(c.Args, "--config")
	if i < 0 || i+1 >= len(c.Args) {
		t.Fatalf("args = %v, want serve --config FILE", c.Args)
	}
	path := c.Args[i+1]
	var vol string
	for _, vm := range c.VolumeMounts {
		if vm.MountPath == filepath.Dir(path) {
			vol = vm.Name
		}
	}
	for _, v := range pod.Volumes {
		if v.Name != vol || v.ConfigMap == nil {
			continue
		}
		for _, o := range m.byKind("ConfigMap") {
			if o.name == v.ConfigMap.Name {
				if text, ok := o.typed.(*corev1.ConfigMap).Data[filepath.Base(path)]; ok {
					return text
				}
			}
		}
	}
	t.Fatalf("no ConfigMap holds --config %s", path)
	return ""
}

// podFiles writes, under root, the files the pod's Secret and ConfigMap
// volumes (other than gatehouse.yaml's) would show at their mount paths.
// Each file holds "<kind>/<name>/<key>" so that a test can tell which
// Secret key a path leads to. It returns the mount paths.
func podFiles(t *testing.T, pod corev1.PodSpec, root, configVolume string) []string {
	t.Helper()
	vols := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		vols[v.Name] = v
	}
	write := func(dir, path, content string) {
		p := filepath.Join(root, dir, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var mounts []string
	for _, vm := range pod.Containers[0].VolumeMounts {
		v, ok := vols[vm.Name]
		if !ok {
			t.Fatalf("volume mount %s names no volume", vm.Name)
		}
		switch {
		case v.Projected != nil:
			for _, src := range v.Projected.Sources {
				if src.Secret == nil {
					t.Errorf("projected volume %s: a source other than a Secret: %+v", v.Name, src)
					continue
				}
				for _, it := range src.Secret.Items {
					write(vm.MountPath, it.Path, "secret/"+src.Secret.Name+"/"+it.Key)
				}
			}
		case v.Secret != nil:
			for _, it := range v.Secret.Items {
				write(vm.MountPath, it.Path, "secret/"+v.Secret.SecretName+"/"+it.Key)
			}
		case v.ConfigMap != nil && v.Name != configVolume:
			for _, it := range v.ConfigMap.Items {
				write(vm.MountPath, it.Path, "configmap/"+v.ConfigMap.Name+"/"+it.Key)
			}
		default:
			continue
		}
		mounts = append(mounts, vm.MountPath)
	}
	return mounts
}

// parseWithPodFiles runs gatehouse's config parser on the ConfigMap's
// gatehouse.yaml with every mounted Secret path moved under a temporary
// root holding the files the pod would see, so that the parser's checks
// of secretFile, dsnFile and the S3 key files read real files. The
// environment holds none of the credentials: only the files can satisfy
// the parser; POD_IP is podIP. It returns the configuration and the
// temporary root.
func parseWithPodFiles(t *testing.T, m manifests, pod corev1.PodSpec, podIP string) (*config.Config, string) {
	t.Helper()
	for _, env := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GATEHOUSE_POSTGRES_DSN", "GATEHOUSE_CLUSTER_SECRET"} {
		t.Setenv(env, "")
	}
	t.Setenv("POD_IP", podIP)
	text := gatehouseConfigText(t, m, pod)
	root := t.TempDir()
	var configVolume string
	for _, vm := range pod.Containers[0].VolumeMounts {
		if vm.MountPath == "/etc/gatehouse" {
			configVolume = vm.Name
		}
	}
	moved := text
	for _, mp := range podFiles(t, pod, root, configVolume) {
		moved = strings.ReplaceAll(moved, mp+"/", filepath.Join(root, mp)+"/")
	}
	cfg, err := config.Parse([]byte(moved))
	if err != nil {
		t.Fatalf("gatehouse rejects the rendered gatehouse.yaml: %v\n%s", err, text)
	}
	return cfg, root
}

// secretBehind returns what the file of a config field holds in the
// temporary pod files: "secret/<name>/<key>".
func secretBehind(t *testing.T, field, path string) string {
	t.Helper()
	if path == "" {
		t.Errorf("%s is not set", field)
		return ""
	}
	s, err := config.ReadSecret(path, "")
	if err != nil {
		t.Errorf("%s: %v", field, err)
	}
	return s
}

func TestHelmChartSharedStorage(t *testing.T) {
	m := helmRenderHA(t, sharedValues(map[string]any{
		"replicas": 4,
		"sharedStorage": map[string]any{
			"cluster": map[string]any{"existingSecret": "gatehouse-cluster", "secretKey": "peer-secret-0123456789", "leaseTTL": "15s"},
		},
	}))
	if n := len(m.byKind("StatefulSet")); n != 0 {
		t.Errorf("%d StatefulSets rendered with shared storage, want none (a Deployment)", n)
	}
	for _, kind := range []string{"Secret", "PersistentVolumeClaim", "HorizontalPodAutoscaler"} {
		if n := len(m.byKind(kind)); n != 0 {
			t.Errorf("%d %s rendered, want none", n, kind)
		}
	}
	dep := m.one(t, "Deployment").typed.(*appsv1.Deployment)
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 4 {
		t.Errorf("Deployment replicas = %v, want the replicas value 4", dep.Spec.Replicas)
	}
	if !selects(dep.Spec.Selector.MatchLabels, dep.Spec.Template.Labels) {
		t.Error("Deployment selector does not match its pod template")
	}
	if s := dep.Spec.Strategy; s.Type != appsv1.RollingUpdateDeploymentStrategyType || s.RollingUpdate == nil ||
		s.RollingUpdate.MaxUnavailable == nil || s.RollingUpdate.MaxUnavailable.IntValue() != 0 {
		t.Errorf("strategy = %+v, want a rolling update that starts a new pod before stopping one", s)
	}
	if dep.Spec.Template.Annotations["checksum/config"] == "" {
		t.Error("no checksum/config annotation: a config change would not roll the pods")
	}
	pod := dep.Spec.Template.Spec
	c := pod.Containers[0]

	// dataDir: a per-pod emptyDir.
	mounts := map[string]string{}
	for _, vm := range c.VolumeMounts {
		mounts[vm.MountPath] = vm.Name
	}
	var data *corev1.Volume
	for i, v := range pod.Volumes {
		if v.Name == mounts["/var/lib/gatehouse"] {
			data = &pod.Volumes[i]
		}
	}
	if data == nil || data.EmptyDir == nil {
		t.Fatalf("dataDir /var/lib/gatehouse: volume %+v, want an emptyDir", data)
	}
	if data.EmptyDir.SizeLimit == nil || data.EmptyDir.SizeLimit.String() != "25Gi" {
		t.Errorf("dataDir emptyDir sizeLimit = %v, want 25Gi", data.EmptyDir.SizeLimit)
	}

	// POD_IP from the downward API; the peer port declared, not exposed.
	podIP := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "POD_IP" })
	if podIP < 0 || c.Env[podIP].ValueFrom == nil || c.Env[podIP].ValueFrom.FieldRef == nil || c.Env[podIP].ValueFrom.FieldRef.FieldPath != "status.podIP" {
		t.Errorf("env = %+v, want POD_IP from fieldRef status.podIP", c.Env)
	}
	for _, e := range c.Env {
		switch e.Name {
		case "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "GATEHOUSE_POSTGRES_DSN", "GATEHOUSE_CLUSTER_SECRET":
			t.Errorf("env %s is set in the pod spec; credentials come from the mounted Secret files", e.Name)
		}
	}
	peer := slices.IndexFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "peer" })
	if peer < 0 || c.Ports[peer].ContainerPort != 5001 {
		t.Errorf("container ports = %+v, want peer 5001", c.Ports)
	}
	svc := m.one(t, "Service").typed.(*corev1.Service)
	if !selects(svc.Spec.Selector, dep.Spec.Template.Labels) {
		t.Error("the Service does not select the pods")
	}
	for _, p := range svc.Spec.Ports {
		if p.Port != 5000 || p.TargetPort.String() != "http" {
			t.Errorf("Service port %+v: the client Service exposes 5000 (http) only, never the peer port", p)
		}
	}

	// The pod is the single replica's pod plus the shared-storage parts:
	// same security context, probes, resources and mounts otherwise.
	single := helmRenderHA(t, nil).one(t, "StatefulSet").typed.(*appsv1.StatefulSet).Spec.Template.Spec
	stripped := pod.DeepCopy()
	sc := &stripped.Containers[0]
	sc.Env = slices.DeleteFunc(sc.Env, func(e corev1.EnvVar) bool { return e.Name == "POD_IP" })
	sc.Ports = slices.DeleteFunc(sc.Ports, func(p corev1.ContainerPort) bool { return p.Name == "peer" })
	sc.VolumeMounts = slices.DeleteFunc(sc.VolumeMounts, func(vm corev1.VolumeMount) bool { return vm.Name == "shared-secrets" })
	stripped.Volumes = slices.DeleteFunc(stripped.Volumes, func(v corev1.Volume) bool { return v.Name == "shared-secrets" || v.Name == "data" })
	stripped.TopologySpreadConstraints = nil
	if !reflect.DeepEqual(*stripped, single) {
		a, _ := yaml.Marshal(stripped)
		b, _ := yaml.Marshal(single)
		t.Errorf("the Deployment's pod differs from the StatefulSet's beyond the shared-storage parts:\n--- deployment (stripped)\n%s\n--- statefulset\n%s", a, b)
	}

	// PodDisruptionBudget: one pod at a time.
	pdb := m.one(t, "PodDisruptionBudget").typed.(*policyv1.PodDisruptionBudget)
	if pdb.Spec.Selector == nil || !selects(pdb.Spec.Selector.MatchLabels, dep.Spec.Template.Labels) {
		t.Errorf("PDB selector %+v does not select the pods", pdb.Spec.Selector)
	}
	if pdb.Spec.MaxUnavailable == nil || pdb.Spec.MaxUnavailable.IntValue() != 1 || pdb.Spec.MinAvailable != nil {
		t.Errorf("PDB maxUnavailable %v minAvailable %v, want maxUnavailable 1", pdb.Spec.MaxUnavailable, pdb.Spec.MinAvailable)
	}

	// Spread over nodes and zones, without refusing to schedule.
	keys := map[string]corev1.TopologySpreadConstraint{}
	for _, tsc := range pod.TopologySpreadConstraints {
		keys[tsc.TopologyKey] = tsc
		if tsc.LabelSelector == nil || !selects(tsc.LabelSelector.MatchLabels, dep.Spec.Template.Labels) {
			t.Errorf("topology spread on %s: selector %+v does not select the pods", tsc.TopologyKey, tsc.LabelSelector)
		}
		if tsc.WhenUnsatisfiable != corev1.ScheduleAnyway || tsc.MaxSkew != 1 {
			t.Errorf("topology spread on %s: %s maxSkew %d, want ScheduleAnyway maxSkew 1", tsc.TopologyKey, tsc.WhenUnsatisfiable, tsc.MaxSkew)
		}
	}
	for _, k := range []string{"kubernetes.io/hostname", "topology.kubernetes.io/zone"} {
		if _, ok := keys[k]; !ok {
			t.Errorf("no topology spread constraint on %s (have %+v)", k, pod.TopologySpreadConstraints)
		}
	}

	// NetworkPolicy: the peer port from gatehouse pods only, the client
	// port from anywhere.
	np := m.one(t, "NetworkPolicy").typed.(*networkingv1.NetworkPolicy)
	if !selects(np.Spec.PodSelector.MatchLabels, dep.Spec.Template.Labels) {
		t.Errorf("NetworkPolicy podSelector %+v does not select the pods", np.Spec.PodSelector)
	}
	var peerOpen, clientOpen bool
	for _, rule := range np.Spec.Ingress {
		for _, p := range rule.Ports {
			switch p.Port.IntValue() {
			case 5001:
				peerOpen = true
				if len(rule.From) == 0 {
					t.Error("NetworkPolicy lets any source reach the peer port")
				}
				for _, f := range rule.From {
					if f.PodSelector == nil || !selects(f.PodSelector.MatchLabels, dep.Spec.Template.Labels) || f.NamespaceSelector != nil || f.IPBlock != nil {
						t.Errorf("NetworkPolicy peer rule admits %+v, want gatehouse pods only", f)
					}
				}
			case 5000:
				clientOpen = len(rule.From) == 0
			}
		}
	}
	if !peerOpen || !clientOpen {
		t.Errorf("NetworkPolicy ingress %+v: want 5001 from gatehouse pods and 5000 from anywhere", np.Spec.Ingress)
	}

	// The Secrets: mounted as files, named by the values; no value inlined.
	var proj *corev1.ProjectedVolumeSource
	for _, v := range pod.Volumes {
		if v.Name == "shared-secrets" {
			proj = v.Projected
		}
	}
	if proj == nil {
		t.Fatal("no projected volume shared-secrets")
	}
	if proj.DefaultMode == nil || *proj.DefaultMode&0o007 != 0 {
		t.Errorf("shared-secrets defaultMode = %v, want no access for others", proj.DefaultMode)
	}
	var secretNames []string
	for _, src := range proj.Sources {
		if src.Secret != nil {
			secretNames = append(secretNames, src.Secret.Name)
		}
	}
	if want := []string{"gatehouse-s3", "gatehouse-postgres", "gatehouse-cluster"}; !slices.Equal(secretNames, want) {
		t.Errorf("projected Secrets = %v, want %v", secretNames, want)
	}

	// gatehouse.yaml: shared storage, files from those Secrets.
	cfg, _ := parseWithPodFiles(t, m, pod, "10.1.2.3")
	text := gatehouseConfigText(t, m, pod)
	for _, leak := range []string{"secret/gatehouse-", "postgres://", "AWS_SECRET_ACCESS_KEY"} {
		if strings.Contains(text, leak) {
			t.Errorf("gatehouse.yaml contains %q: a secret value (or key name) in the ConfigMap", leak)
		}
	}
	st := cfg.Storage
	if st.Blobs.Type != config.StorageS3 || st.Metadata.Type != config.StoragePostgres || !st.Shared() {
		t.Errorf("storage blobs %q metadata %q, want s3 and postgres", st.Blobs.Type, st.Metadata.Type)
	}
	s3 := st.Blobs.S3
	if s3.Endpoint != "https://s3.eu-west-1.amazonaws.com" || s3.Bucket != "registry-cache" || s3.Prefix != "gatehouse/" || s3.Region != "eu-west-1" || s3.PathStyle {
		t.Errorf("storage.blobs.s3 = %+v", s3)
	}
	if st.Blobs.LocalTier.MaxSize != 10<<30 {
		t.Errorf("storage.blobs.localTier.maxSize = %d, want the chart's 10GiB", st.Blobs.LocalTier.MaxSize)
	}
	for _, f := range []struct{ field, path, want string }{
		{"storage.blobs.s3.accessKeyIdFile", s3.AccessKeyIDFile, "secret/gatehouse-s3/AWS_ACCESS_KEY_ID"},
		{"storage.blobs.s3.secretAccessKeyFile", s3.SecretAccessKeyFile, "secret/gatehouse-s3/AWS_SECRET_ACCESS_KEY"},
		{"storage.metadata.postgres.dsnFile", st.Metadata.Postgres.DSNFile, "secret/gatehouse-postgres/uri"},
		{"cluster.secretFile", cfg.Cluster.SecretFile, "secret/gatehouse-cluster/peer-secret-0123456789"},
	} {
		if got := secretBehind(t, f.field, f.path); got != f.want {
			t.Errorf("%s leads to %q, want key %q", f.field, got, f.want)
		}
	}
	if s3.CAFile != "" {
		t.Errorf("storage.blobs.s3.caFile = %q without sharedStorage.s3.ca", s3.CAFile)
	}
	if got := os.ExpandEnv(cfg.Cluster.Advertise); got != "http://10.1.2.3:5001" {
		t.Errorf("cluster.advertise %q expands (as gatehouse does, POD_IP=10.1.2.3) to %q, want http://10.1.2.3:5001", cfg.Cluster.Advertise, got)
	}
	if cfg.Cluster.PeerListen != ":5001" || cfg.Cluster.LeaseTTL.D().String() != "15s" {
		t.Errorf("cluster peerListen %q leaseTTL %v, want :5001 and 15s", cfg.Cluster.PeerListen, cfg.Cluster.LeaseTTL.D())
	}
	if cfg.DataDir != "/var/lib/gatehouse" || cfg.Listen != ":5000" || len(cfg.Gate.Policy.Rules) == 0 {
		t.Errorf("config dataDir %q listen %q rules %d: the chart's other settings were lost", cfg.DataDir, cfg.Listen, len(cfg.Gate.Policy.Rules))
	}
}

// Default replicas, the HPA, the PDB's minAvailable, options off, the S3
// CA, an ephemeral data volume and an IPv6 advertise address.
func TestHelmChartSharedStorageOptions(t *testing.T) {
	m := helmRenderHA(t, sharedValues(nil))
	if dep := m.one(t, "Deployment").typed.(*appsv1.Deployment); dep.Spec.Replicas == nil || *dep.Spec.Replicas != 3 {
		t.Errorf("Deployment replicas = %v, want 3 by default with shared storage", dep.Spec.Replicas)
	}
	if n := len(m.byKind("HorizontalPodAutoscaler")); n != 0 {
		t.Errorf("%d HorizontalPodAutoscalers rendered although autoscaling is off", n)
	}

	m = helmRenderHA(t, sharedValues(map[string]any{
		"autoscaling": map[string]any{"enabled": true, "minReplicas": 2, "maxReplicas": 8, "targetCPUUtilizationPercentage": 60},
	}))
	dep := m.one(t, "Deployment").typed.(*appsv1.Deployment)
	if dep.Spec.Replicas != nil {
		t.Errorf("Deployment replicas = %d with an HPA, want unset (the HPA owns it)", *dep.Spec.Replicas)
	}
	hpa := m.one(t, "HorizontalPodAutoscaler").typed.(*autoscalingv2.HorizontalPodAutoscaler)
	ref := hpa.Spec.ScaleTargetRef
	if ref.APIVersion != "apps/v1" || ref.Kind != "Deployment" || ref.Name != dep.Name {
		t.Errorf("HPA scaleTargetRef = %+v, want Deployment %s", ref, dep.Name)
	}
	if hpa.Spec.MinReplicas == nil || *hpa.Spec.MinReplicas != 2 || hpa.Spec.MaxReplicas != 8 {
		t.Errorf("HPA min %v max %d, want 2 and 8", hpa.Spec.MinReplicas, hpa.Spec.MaxReplicas)
	}
	if len(hpa.Spec.Metrics) != 1 || hpa.Spec.Metrics[0].Resource == nil || hpa.Spec.Metrics[0].Resource.Name != corev1.ResourceCPU ||
		hpa.Spec.Metrics[0].Resource.Target.AverageUtilization == nil || *hpa.Spec.Metrics[0].Resource.Target.AverageUtilization != 60 {
		t.Errorf("HPA metrics = %+v, want CPU utilization 60%%", hpa.Spec.Metrics)
	}

	m = helmRenderHA(t, sharedValues(map[string]any{
		"podDisruptionBudget": map[string]any{"minAvailable": 2, "maxUnavailable": nil},
		"networkPolicy":       map[string]any{"enabled": false},
		"topologySpread":      map[string]any{"whenUnsatisfiable": "DoNotSchedule", "topologyKeys": []any{"topology.kubernetes.io/zone"}},
	}))
	pdb := m.one(t, "PodDisruptionBudget").typed.(*policyv1.PodDisruptionBudget)
	if pdb.Spec.MinAvailable == nil || pdb.Spec.MinAvailable.IntValue() != 2 || pdb.Spec.MaxUnavailable != nil {
		t.Errorf("PDB minAvailable %v maxUnavailable %v, want minAvailable 2 only", pdb.Spec.MinAvailable, pdb.Spec.MaxUnavailable)
	}
	if n := len(m.byKind("NetworkPolicy")); n != 0 {
		t.Errorf("NetworkPolicy rendered although disabled")
	}
	tsc := m.one(t, "Deployment").typed.(*appsv1.Deployment).Spec.Template.Spec.TopologySpreadConstraints
	if len(tsc) != 1 || tsc[0].TopologyKey != "topology.kubernetes.io/zone" || tsc[0].WhenUnsatisfiable != corev1.DoNotSchedule {
		t.Errorf("topologySpreadConstraints = %+v, want one on zones, DoNotSchedule", tsc)
	}

	m = helmRenderHA(t, sharedValues(map[string]any{
		"podDisruptionBudget": map[string]any{"enabled": false},
		"topologySpread":      map[string]any{"enabled": false},
		"sharedStorage": map[string]any{
			"s3": map[string]any{"endpoint": "http://minio.storage:9000", "bucket": "b", "pathStyle": true, "existingSecret": "obc",
				"partSize": "32MiB", "ca": map[string]any{"configMapName": "minio-ca", "key": "root.pem"}},
			"localTier":  map[string]any{"maxSize": ""},
			"dataVolume": map[string]any{"ephemeral": map[string]any{"enabled": true, "storageClass": "local-nvme", "size": "40Gi"}},
			"cluster":    map[string]any{"existingSecret": "gatehouse-peers", "peerPort": 7001, "advertise": "http://[${POD_IP}]:7001"},
		},
	}))
	if n := len(m.byKind("PodDisruptionBudget")); n != 0 {
		t.Errorf("PDB rendered although disabled")
	}
	dep = m.one(t, "Deployment").typed.(*appsv1.Deployment)
	pod := dep.Spec.Template.Spec
	if len(pod.TopologySpreadConstraints) != 0 {
		t.Errorf("topology spread rendered although disabled")
	}
	for _, v := range pod.Volumes {
		if v.Name != "data" {
			continue
		}
		if v.Ephemeral == nil || v.Ephemeral.VolumeClaimTemplate == nil {
			t.Fatalf("data volume %+v, want a generic ephemeral volume", v)
		}
		spec := v.Ephemeral.VolumeClaimTemplate.Spec
		if q := spec.Resources.Requests[corev1.ResourceStorage]; q.String() != "40Gi" || spec.StorageClassName == nil || *spec.StorageClassName != "local-nvme" {
			t.Errorf("ephemeral volume claim = %+v", spec)
		}
	}
	if c := pod.Containers[0]; !slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return p.Name == "peer" && p.ContainerPort == 7001 }) {
		t.Errorf("container ports = %+v, want peer 7001", c.Ports)
	}
	cfg, _ := parseWithPodFiles(t, m, pod, "fd00:10::7")
	s3 := cfg.Storage.Blobs.S3
	if !s3.PathStyle || s3.PartSize != 32<<20 || s3.Endpoint != "http://minio.storage:9000" {
		t.Errorf("storage.blobs.s3 = %+v", s3)
	}
	if got := secretBehind(t, "storage.blobs.s3.caFile", s3.CAFile); got != "configmap/minio-ca/root.pem" {
		t.Errorf("storage.blobs.s3.caFile leads to %q, want key root.pem of ConfigMap minio-ca", got)
	}
	if cfg.Storage.Blobs.LocalTier.MaxSize != 0 {
		t.Errorf("localTier.maxSize = %d with the tier turned off", cfg.Storage.Blobs.LocalTier.MaxSize)
	}
	if cfg.Cluster.PeerListen != ":7001" || os.ExpandEnv(cfg.Cluster.Advertise) != "http://[fd00:10::7]:7001" {
		t.Errorf("cluster peerListen %q advertise %q", cfg.Cluster.PeerListen, cfg.Cluster.Advertise)
	}
}

// Without shared storage the chart is the single replica it always was,
// whatever the shared-storage-only values say.
func TestHelmChartSingleReplicaUnchanged(t *testing.T) {
	m := helmRenderHA(t, map[string]any{"sharedStorage": map[string]any{"s3": map[string]any{"bucket": "ignored"}}})
	m.one(t, "StatefulSet")
	for _, kind := range []string{"Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"} {
		if n := len(m.byKind(kind)); n != 0 {
			t.Errorf("%d %s rendered without shared storage", n, kind)
		}
	}
	checkGatehouse(t, m, false)
	cfg, err := config.Parse([]byte(m.one(t, "ConfigMap").typed.(*corev1.ConfigMap).Data["gatehouse.yaml"]))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Storage.Shared() || cfg.Storage.Blobs.Type != config.StorageLocal {
		t.Errorf("storage = %+v without shared storage, want the data directory's", cfg.Storage)
	}
	pod := m.one(t, "StatefulSet").typed.(*appsv1.StatefulSet).Spec.Template.Spec
	if slices.ContainsFunc(pod.Containers[0].Ports, func(p corev1.ContainerPort) bool { return p.Name == "peer" }) ||
		slices.ContainsFunc(pod.Containers[0].Env, func(e corev1.EnvVar) bool { return e.Name == "POD_IP" }) {
		t.Error("single replica: peer port or POD_IP rendered")
	}
}

// Shared storage without a required value fails, naming the value: the
// schema (values.schema.json) first, and the template's own check when
// schema validation is skipped.
func TestHelmChartSharedStorageRequiredValues(t *testing.T) {
	for _, tc := range []struct {
		value  string // the value left empty, as section.key of sharedStorage
		values map[string]any
	}{
		{"s3.bucket", map[string]any{"s3": map[string]any{"bucket": ""}}},
		{"s3.endpoint", map[string]any{"s3": map[string]any{"endpoint": ""}}},
		{"s3.existingSecret", map[string]any{"s3": map[string]any{"existingSecret": ""}}},
		{"postgres.existingSecret", map[string]any{"postgres": map[string]any{"existingSecret": ""}}},
		{"cluster.existingSecret", map[string]any{"cluster": map[string]any{"existingSecret": ""}}},
	} {
		t.Run(tc.value, func(t *testing.T) {
			vals := sharedValues(nil)
			ss := vals["sharedStorage"].(map[string]any)
			for section, kv := range tc.values {
				for k, v := range kv.(map[string]any) {
					ss[section].(map[string]any)[k] = v
				}
			}
			dotted := "sharedStorage." + tc.value
			pointer := "/" + strings.ReplaceAll(dotted, ".", "/")
			_, err := renderChart(t, vals, false)
			if err == nil || !strings.Contains(err.Error(), pointer) {
				t.Errorf("schema validation: err = %v, want one naming %s", err, pointer)
			}
			_, err = renderChart(t, vals, true)
			if err == nil || !strings.Contains(err.Error(), dotted) {
				t.Errorf("template check (schema skipped): err = %v, want one naming %s", err, dotted)
			}
		})
	}

	// Shared-storage-only settings without shared storage.
	for name, vals := range map[string]map[string]any{
		"replicas":    {"replicas": 3},
		"autoscaling": {"autoscaling": map[string]any{"enabled": true}},
	} {
		if _, err := renderChart(t, vals, false); err == nil || !strings.Contains(err.Error(), name) || !strings.Contains(err.Error(), "sharedStorage.enabled") {
			t.Errorf("%s without shared storage: err = %v, want one naming %s and sharedStorage.enabled", name, err, name)
		}
	}
	// Typos in the new sections are refused by the schema.
	vals := sharedValues(nil)
	vals["sharedStorage"].(map[string]any)["s3"].(map[string]any)["buckett"] = "x"
	if _, err := renderChart(t, vals, false); err == nil || !strings.Contains(err.Error(), "buckett") {
		t.Errorf("unknown key sharedStorage.s3.buckett: err = %v", err)
	}
	vals = sharedValues(map[string]any{"podDisruptionBudget": map[string]any{"minAvailable": 2}})
	if _, err := renderChart(t, vals, false); err == nil || !strings.Contains(err.Error(), "podDisruptionBudget") {
		t.Errorf("PDB with both maxUnavailable and minAvailable: err = %v", err)
	}
}
