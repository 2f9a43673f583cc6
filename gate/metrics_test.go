package gate

import (
	"testing"

	"github.com/gatehouse/gatehouse/metrics"
	"github.com/gatehouse/gatehouse/metrics/metricstest"
)

// A fresh gate creates, at 0, the gatehouse_gate_decisions_total series
// each rule in force can give on a scanned image (by its mode), and those
// of the built-in default rule when no rule matches every repository, so
// that the dashboard lists the rules before their first pull.
func TestNewCreatesDecisionSeriesPerRule(t *testing.T) {
	for _, tc := range []struct {
		name, yml string
		want      []metrics.Decision
		not       []metrics.Decision
	}{
		{"rules by mode, default rule", `
gate:
  policy:
    rules:
      - {name: strict, repositories: ["team/*"], mode: enforce}
      - {name: watch, upstreams: [ghcr.io], mode: audit}
      - {name: none, repositories: ["scratch/**"], mode: "off"}
`, []metrics.Decision{
			{Result: "admitted", Reason: ReasonClean, Rule: "strict"}, {Result: "denied", Reason: ReasonVulnerable, Rule: "strict"},
			{Result: "admitted", Reason: ReasonClean, Rule: "watch"}, {Result: "admitted", Reason: ReasonAudit, Rule: "watch"},
			{Result: "admitted", Reason: ReasonOff, Rule: "none"},
			{Result: "admitted", Reason: ReasonClean, Rule: "default"}, {Result: "denied", Reason: ReasonVulnerable, Rule: "default"},
			{Result: "error", Reason: "error"}, {Result: "pending", Reason: "pending"},
		}, []metrics.Decision{{Result: "denied", Reason: ReasonVulnerable, Rule: "watch"}}},
		{"catch-all rule: no default", `
gate:
  policy:
    rules:
      - {name: everything, mode: audit}
`, []metrics.Decision{{Result: "admitted", Reason: ReasonAudit, Rule: "everything"}},
			[]metrics.Decision{{Result: "admitted", Reason: ReasonClean, Rule: "default"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			metrics.GateDecisions.Reset()
			g, err := newGateErr(t, tc.yml)
			if err != nil {
				t.Fatal(err)
			}
			defer g.Close()
			have := decisionsGathered(t)
			for _, d := range tc.want {
				if v, ok := have[d]; !ok || v != 0 {
					t.Errorf("series %+v: %v (exists %v), want 0", d, v, ok)
				}
			}
			for _, d := range tc.not {
				if _, ok := have[d]; ok {
					t.Errorf("series %+v exists; the rule cannot give it", d)
				}
			}
		})
	}
}

// decisionsGathered scrapes gatehouse_gate_decisions_total.
func decisionsGathered(t *testing.T) map[metrics.Decision]float64 {
	t.Helper()
	out := map[metrics.Decision]float64{}
	for _, s := range metricstest.Collect(t, metrics.GateDecisions) {
		out[metrics.Decision{Result: s.Labels["result"], Reason: s.Labels["reason"], Rule: s.Labels["rule"]}] = s.Value
	}
	return out
}
