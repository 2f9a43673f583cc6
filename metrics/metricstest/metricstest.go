// Package metricstest reads gatehouse's collectors in tests as a scrape
// does: only the series that exist are seen, and none is created by
// looking (as WithLabelValues would).
package metricstest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// Series is one gathered series.
type Series struct {
	Family string
	Labels map[string]string
	// Value is a counter's or gauge's value (0 for other types).
	Value float64
}

// Gather gathers g.
func Gather(t testing.TB, g prometheus.Gatherer) []Series {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []Series
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			s := Series{Family: f.GetName(), Labels: map[string]string{}, Value: m.GetCounter().GetValue() + m.GetGauge().GetValue()}
			for _, l := range m.GetLabel() {
				s.Labels[l.GetName()] = l.GetValue()
			}
			out = append(out, s)
		}
	}
	return out
}

// Collect gathers cs, registered on a registry of their own.
func Collect(t testing.TB, cs ...prometheus.Collector) []Series {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(cs...)
	return Gather(t, reg)
}
