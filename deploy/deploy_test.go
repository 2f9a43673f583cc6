package deploy

// Checks of the monitoring files: the Grafana dashboard
// (deploy/grafana/gatehouse.json) only queries metrics gatehouse exports,
// and the Prometheus alert rules (deploy/prometheus) pass the real
// promtool's `check rules` and their unit tests (`test rules`).

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"gopkg.in/yaml.v3"

	"github.com/gatehouse/gatehouse/metrics"
)

// exportedMetrics registers gatehouse's collectors on a fresh registry (as
// the server does, with every gauge source set), observes each vector once
// so that it is gathered, and returns the metric families by name.
func exportedMetrics(t *testing.T) map[string]dto.MetricType {
	t.Helper()
	reg := prometheus.NewRegistry()
	err := metrics.Register(reg, metrics.Sources{
		CacheUsage:         func() (int64, int) { return 1, 1 },
		RateLimitRemaining: map[string]func() int64{"docker.io": func() int64 { return 1 }},
		DB:                 func() (string, time.Time) { return "v", time.Now() },
		Disk:               func() (uint64, uint64, error) { return 1, 2, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	metrics.Requests.WithLabelValues("blob", "GET", "200").Add(0)
	metrics.RequestDuration.WithLabelValues("blob", "GET").Observe(0)
	metrics.ServedBytes.WithLabelValues("cache").Add(0)
	metrics.CacheRequests.WithLabelValues("blob", "hit").Add(0)
	metrics.UpstreamRequests.WithLabelValues("docker.io", "200").Add(0)
	metrics.UpstreamDuration.WithLabelValues("docker.io").Observe(0)
	metrics.UpstreamBytes.WithLabelValues("docker.io").Add(0)
	metrics.UpstreamRetries.WithLabelValues("docker.io", "429").Add(0)
	metrics.UpstreamInFlight.WithLabelValues("docker.io").Add(0)
	metrics.UpstreamQueued.WithLabelValues("docker.io").Add(0)
	metrics.UpstreamQueueTimeouts.WithLabelValues("docker.io").Add(0)
	metrics.UpstreamAddressesRefused.WithLabelValues("docker.io").Add(0)
	metrics.ManifestFetchesFailed.WithLabelValues("docker.io", "read").Add(0)
	metrics.BlobFetchResumes.WithLabelValues("docker.io", "ok").Add(0) // pre-initialised per configured upstream
	metrics.GateDecisions.WithLabelValues("denied", "vulnerable", "default").Add(0)
	metrics.DBUpdates.WithLabelValues("updated").Add(0)
	metrics.SignatureVerifications.WithLabelValues("verified").Add(0)
	metrics.AccessReloads.WithLabelValues("tls", "ok").Add(0) // exported from the first reload on
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]dto.MetricType{}
	for _, f := range fams {
		out[f.GetName()] = f.GetType()
	}
	return out
}

// metricNameRE matches the metric names a query can use: gatehouse's own
// and the Go and process collectors'.
var metricNameRE = regexp.MustCompile(`\b(?:gatehouse|go|process)_[A-Za-z0-9_]+\b`)

// missingMetrics returns the names queried in expr that are not exported.
// name_bucket, name_sum and name_count are accepted for a histogram (or
// summary) name.
func missingMetrics(expr string, exported map[string]dto.MetricType) []string {
	var missing []string
	for _, name := range metricNameRE.FindAllString(expr, -1) {
		if _, ok := exported[name]; ok {
			continue
		}
		found := false
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			base, ok := strings.CutSuffix(name, suf)
			if !ok {
				continue
			}
			typ, ok := exported[base]
			if ok && (typ == dto.MetricType_HISTOGRAM || typ == dto.MetricType_SUMMARY ||
				(suf != "_bucket" && typ == dto.MetricType_GAUGE_HISTOGRAM)) {
				found = true
			}
		}
		if !found && !slices.Contains(missing, name) {
			missing = append(missing, name)
		}
	}
	return missing
}

func TestMissingMetricsHelper(t *testing.T) {
	exp := map[string]dto.MetricType{"gatehouse_x_seconds": dto.MetricType_HISTOGRAM, "gatehouse_y_total": dto.MetricType_COUNTER}
	for expr, want := range map[string][]string{
		`rate(gatehouse_x_seconds_bucket{le="1"}[5m]) / gatehouse_y_total`: nil,
		`gatehouse_y_total_count + gatehouse_nope`:                         {"gatehouse_y_total_count", "gatehouse_nope"},
		`sum by (rule) (go_goroutines) and process_rss{job="$job"}`:        {"go_goroutines", "process_rss"},
	} {
		if got := missingMetrics(expr, exp); !slices.Equal(got, want) {
			t.Errorf("missingMetrics(%q) = %q, want %q", expr, got, want)
		}
	}
}

// dashboardPanel is the part of a Grafana panel this test reads; rows
// nest their panels when collapsed.
type dashboardPanel struct {
	ID      int                     `json:"id"`
	Type    string                  `json:"type"`
	Title   string                  `json:"title"`
	Targets []struct{ Expr string } `json:"targets"`
	Panels  []dashboardPanel        `json:"panels"`
}

func TestDashboardQueriesExportedMetrics(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("grafana", "gatehouse.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		SchemaVersion int              `json:"schemaVersion"`
		UID           string           `json:"uid"`
		Title         string           `json:"title"`
		Panels        []dashboardPanel `json:"panels"`
		Inputs        []struct {
			Name, Type, PluginID string
		} `json:"__inputs"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	if dash.SchemaVersion < 36 || dash.UID == "" || dash.Title == "" {
		t.Errorf("schemaVersion %d, uid %q, title %q", dash.SchemaVersion, dash.UID, dash.Title)
	}
	if !slices.ContainsFunc(dash.Inputs, func(in struct{ Name, Type, PluginID string }) bool {
		return in.Name == "DS_PROMETHEUS" && in.Type == "datasource" && in.PluginID == "prometheus"
	}) {
		t.Errorf("no DS_PROMETHEUS datasource input: %+v", dash.Inputs)
	}
	exported := exportedMetrics(t)
	used := map[string]bool{}
	ids := map[int]string{}
	var exprs int
	var walk func([]dashboardPanel)
	walk = func(ps []dashboardPanel) {
		for _, p := range ps {
			if prev, dup := ids[p.ID]; dup {
				t.Errorf("panel id %d used by %q and %q", p.ID, prev, p.Title)
			}
			ids[p.ID] = p.Title
			if p.Type != "row" && len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for _, tg := range p.Targets {
				exprs++
				if strings.TrimSpace(tg.Expr) == "" {
					t.Errorf("panel %q: empty expr", p.Title)
				}
				if m := missingMetrics(tg.Expr, exported); len(m) > 0 {
					t.Errorf("panel %q queries metrics gatehouse does not export: %q\n  expr: %s", p.Title, m, tg.Expr)
				}
				for _, n := range metricNameRE.FindAllString(tg.Expr, -1) {
					used[n] = true
				}
			}
			walk(p.Panels)
		}
	}
	walk(dash.Panels)
	for _, v := range dash.Templating.List {
		if m := missingMetrics(v.Definition, exported); len(m) > 0 {
			t.Errorf("variable %q queries metrics gatehouse does not export: %q", v.Name, m)
		}
	}
	// The dashboard covers what issue 5 asks for.
	for _, name := range []string{
		"gatehouse_http_requests_total", "gatehouse_cache_requests_total", "gatehouse_served_bytes_total",
		"gatehouse_upstream_requests_total", "gatehouse_upstream_request_duration_seconds_bucket",
		"gatehouse_upstream_ratelimit_remaining", "gatehouse_gate_decisions_total",
		"gatehouse_scan_duration_seconds_bucket", "gatehouse_scans_in_flight", "gatehouse_scans_queued",
		"gatehouse_vulndb_age_seconds", "gatehouse_vulndb_info", "gatehouse_signature_verifications_total",
		"gatehouse_blob_fetches_total", "gatehouse_blob_fetches_joined_total",
		"process_resident_memory_bytes", "go_goroutines",
	} {
		if !used[name] {
			t.Errorf("no panel queries %s", name)
		}
	}
	t.Logf("%d panels, %d queries, %d metric names, all exported", len(ids), exprs, len(used))
}

// promtool returns the path of the real promtool (Debian package
// prometheus, installed by scripts/deps.sh).
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		if testing.Short() {
			t.Skip("promtool not installed (Debian package prometheus; run scripts/deps.sh)")
		}
		t.Fatal("promtool not found: install the Debian package prometheus (scripts/deps.sh)")
	}
	return p
}

func TestRulesPromtoolCheck(t *testing.T) {
	bin := promtool(t)
	out, err := exec.Command(bin, "check", "rules", filepath.Join("prometheus", "gatehouse-rules.yml")).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}

func TestRulesPromtoolUnitTests(t *testing.T) {
	bin := promtool(t)
	cmd := exec.Command(bin, "test", "rules", "gatehouse-rules_test.yml")
	cmd.Dir = "prometheus"
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	t.Logf("%s", out)
}

// TestRulesQueryExportedMetrics: every alert queries metrics gatehouse
// exports and carries the annotations an on-call engineer needs.
func TestRulesQueryExportedMetrics(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("prometheus", "gatehouse-rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Groups []struct {
			Name  string
			Rules []struct {
				Alert, Record, Expr string
				Labels              map[string]string
				Annotations         map[string]string
			}
		}
	}
	if err := yaml.Unmarshal(b, &file); err != nil {
		t.Fatal(err)
	}
	exported := exportedMetrics(t)
	var alerts []string
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			name := r.Alert + r.Record
			alerts = append(alerts, name)
			if m := missingMetrics(r.Expr, exported); len(m) > 0 {
				t.Errorf("rule %s queries metrics gatehouse does not export: %q", name, m)
			}
			if r.Alert == "" {
				continue
			}
			for _, a := range []string{"summary", "description", "runbook"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("alert %s: no %s annotation", name, a)
				}
			}
			if r.Labels["severity"] == "" {
				t.Errorf("alert %s: no severity label", name)
			}
		}
	}
	for _, want := range []string{
		"GatehouseUpstreamFailing", "GatehouseRateLimitLow", "GatehouseVulnDBStale", "GatehouseVulnDBMissing",
		"GatehouseScanErrors", "GatehouseCacheEvictingHeavily", "GatehouseBlobFetchFailures",
		"GatehouseUpstreamQueueTimeouts", "GatehouseUpstreamRedirectRefused",
	} {
		if !slices.Contains(alerts, want) {
			t.Errorf("alert %s missing (have %q)", want, alerts)
		}
	}
}
