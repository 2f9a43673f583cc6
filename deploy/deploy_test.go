package deploy

// Checks of the monitoring files: the Grafana dashboard
// (deploy/grafana/gatehouse.json) only queries metrics gatehouse exports,
// and the Prometheus alert rules (deploy/prometheus) pass the real
// promtool's `check rules` and their unit tests (`test rules`).

import (
	"encoding/json"
	"log/slog"
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

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate"
	"github.com/gatehouse/gatehouse/metrics"
	"github.com/gatehouse/gatehouse/storage/boltmeta"
	"github.com/gatehouse/gatehouse/upstream"
)

// exportedMetrics returns the metric families a freshly started gatehouse
// exports before any request, by name: the default configuration's
// upstream clients and gate are built (their constructors create their
// series at 0, as at start-up) and the collectors are registered on a
// fresh registry with every gauge source set, as serve does. Nothing is
// observed: a family that only appears with its first event is missing,
// and a dashboard panel or alert querying it would show "No data" on a
// fresh start. (The collectors are package variables; no other test of
// this package touches them.)
func exportedMetrics(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	cfg, err := config.Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	rate := map[string]func() int64{}
	for i := range cfg.Upstreams {
		c, err := upstream.New(&cfg.Upstreams[i], log)
		if err != nil {
			t.Fatal(err)
		}
		rate[c.Name()] = c.RateLimitRemaining
	}
	meta, err := boltmeta.Open(filepath.Join(t.TempDir(), "gate.db"), 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { meta.Close() })
	g, err := gate.New(gate.Options{Config: &cfg.Gate, Meta: meta, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	// With a webhook configured (events.webhooks), as the events panels
	// and GatehouseEventsFailing assume: its series exist from start-up.
	metrics.InitEventSubscriber("example", config.EventTypes)
	reg := prometheus.NewRegistry()
	err = metrics.Register(reg, metrics.Sources{
		CacheUsage:         func() (int64, int) { return 0, 0 },
		CacheLimit:         int64(cfg.Cache.MaxSize),
		RateLimitRemaining: rate,
		DB:                 func() (string, time.Time) { return "", time.Time{} },
		Disk:               func() (uint64, uint64, error) { return 1, 2, nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.MetricFamily{}
	for _, f := range fams {
		out[f.GetName()] = f
	}
	return out
}

// typesOf returns the type of each family by name.
func typesOf(fams map[string]*dto.MetricFamily) map[string]dto.MetricType {
	out := map[string]dto.MetricType{}
	for name, f := range fams {
		out[name] = f.GetType()
	}
	return out
}

// selectorRE matches a selector with label matchers, matcherRE one
// matcher in it.
var (
	selectorRE = regexp.MustCompile(`\b((?:gatehouse|go|process)_[A-Za-z0-9_]+)\{([^}]*)\}`)
	matcherRE  = regexp.MustCompile(`([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"`)
)

// unmatchedSelectors returns the selectors of expr that match no series of
// fams: a panel or rule filtering on a label value that does not exist
// before its first event shows "No data" (matchers on dashboard variables,
// $job and $instance, are left out).
func unmatchedSelectors(expr string, fams map[string]*dto.MetricFamily) []string {
	var out []string
	for _, sel := range selectorRE.FindAllStringSubmatch(expr, -1) {
		f := fams[sel[1]]
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(sel[1], suf); ok && f == nil {
				f = fams[base]
			}
		}
		if f == nil {
			continue // missingMetrics reports it
		}
		matches := func(m *dto.Metric) bool {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for _, mt := range matcherRE.FindAllStringSubmatch(sel[2], -1) {
				name, op, val := mt[1], mt[2], mt[3]
				if strings.Contains(val, "$") {
					continue
				}
				var ok bool
				switch op {
				case "=", "!=":
					ok = labels[name] == val
				default:
					ok = regexp.MustCompile("^(?:" + val + ")$").MatchString(labels[name])
				}
				if ok == strings.HasPrefix(op, "!") {
					return false
				}
			}
			return true
		}
		if !slices.ContainsFunc(f.GetMetric(), matches) {
			out = append(out, sel[0])
		}
	}
	return out
}

func TestUnmatchedSelectorsHelper(t *testing.T) {
	name, value := "code", "error"
	fams := map[string]*dto.MetricFamily{"gatehouse_y_total": {Metric: []*dto.Metric{{Label: []*dto.LabelPair{{Name: &name, Value: &value}}}}}}
	for expr, want := range map[string][]string{
		`rate(gatehouse_y_total{job=~"$job", code=~"error|5.."}[5m])`:      nil,
		`gatehouse_y_total{code="error"} + gatehouse_y_total{code!="200"}`: nil,
		`gatehouse_y_total{code="200"}`:                                    {`gatehouse_y_total{code="200"}`},
		`gatehouse_y_total{code!~"err.*"} or gatehouse_nope{a="b"}`:        {`gatehouse_y_total{code!~"err.*"}`},
	} {
		if got := unmatchedSelectors(expr, fams); !slices.Equal(got, want) {
			t.Errorf("unmatchedSelectors(%q) = %q, want %q", expr, got, want)
		}
	}
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
	fams := exportedMetrics(t)
	exported := typesOf(fams)
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
				if u := unmatchedSelectors(tg.Expr, fams); len(u) > 0 {
					t.Errorf("panel %q selects series a fresh gatehouse does not have: %q", p.Title, u)
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
	fams := exportedMetrics(t)
	exported := typesOf(fams)
	var alerts []string
	for _, g := range file.Groups {
		for _, r := range g.Rules {
			name := r.Alert + r.Record
			alerts = append(alerts, name)
			if m := missingMetrics(r.Expr, exported); len(m) > 0 {
				t.Errorf("rule %s queries metrics gatehouse does not export: %q", name, m)
			}
			if u := unmatchedSelectors(r.Expr, fams); len(u) > 0 {
				t.Errorf("rule %s selects series a fresh gatehouse does not have: %q", name, u)
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
