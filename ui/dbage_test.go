package ui

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestPolicyPageDBMaxAge: the policy page shows gate.db.maxAge and says so
// when the loaded DB is older than it (new verdicts are then refused under
// staleDB: deny).
func TestPolicyPageDBMaxAge(t *testing.T) {
	for _, tc := range []struct {
		name   string
		maxAge time.Duration
		want   []string
		stale  bool
	}{
		{"unset", 0, []string{"none (gate.db.maxAge is not set)"}, false},
		{"fresh", 48 * time.Hour, []string{"48h (gate.db.maxAge)"}, false},
		{"stale", 24 * time.Hour, []string{"24h (gate.db.maxAge)", "older than gate.db.maxAge"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := New(Options{Source: newSource(), Now: func() time.Time { return now }, Log: slog.New(slog.DiscardHandler),
				DB: func() (DBStatus, error) {
					return DBStatus{Version: "2:2026-11-22T06:00:00Z", UpdatedAt: now.Add(-30 * time.Hour), MaxAge: tc.maxAge}, nil
				},
				Cache: func() (int64, int64) { return 0, 0 }})
			if err != nil {
				t.Fatal(err)
			}
			mux := http.NewServeMux()
			mux.Handle("/ui/", h)
			srv := httptest.NewServer(mux)
			defer srv.Close()
			body := get(t, srv, "/ui/policy", 200)
			contains(t, "policy page", body, tc.want...)
			if got := strings.Contains(body, "older than gate.db.maxAge"); got != tc.stale {
				t.Errorf("stale warning shown: %v, want %v", got, tc.stale)
			}
		})
	}
}
