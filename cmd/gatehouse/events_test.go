package main

import (
	"log/slog"
	"testing"
	"time"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/events"
)

// DBStale is told once when the DB becomes older than maxAge, again only
// after a fresh DB was loaded in between; never without maxAge or a DB.
func TestStaleWatch(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	var w staleWatch
	for i, c := range []struct {
		built  time.Time
		maxAge time.Duration
		want   bool
	}{
		{now.Add(-day), 2 * day, false},       // fresh
		{now.Add(-3 * day), 2 * day, true},    // became stale
		{now.Add(-3 * day), 2 * day, false},   // still stale: told once
		{now.Add(-4 * day), 2 * day, false},   // older still
		{now.Add(-time.Hour), 2 * day, false}, // updated
		{now.Add(-3 * day), 2 * day, true},    // stale again
		{time.Time{}, 2 * day, false},         // no DB: not "stale"
		{now.Add(-30 * day), 0, false},        // no maxAge
		{now.Add(-30 * day), day, true},
	} {
		if got := w.check(c.built, now, c.maxAge); got != c.want {
			t.Errorf("step %d: check(%v, maxAge %v) = %v; want %v", i, now.Sub(c.built), c.maxAge, got, c.want)
		}
	}
}

func TestNewEventsNop(t *testing.T) {
	p, err := newEvents(config.Default(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := p.(events.Nop); !ok {
		t.Errorf("no webhooks: %T; want events.Nop", p)
	}
	if err := closeEvents(p, config.Default()); err != nil {
		t.Error(err)
	}
}
