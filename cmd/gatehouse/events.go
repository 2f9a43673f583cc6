package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/events"
)

// newEvents is serve's publisher of events: the webhook sender of
// cfg.events, or events.Nop when no webhook is configured.
func newEvents(cfg *config.Config, log *slog.Logger) (events.Publisher, error) {
	if len(cfg.Events.Webhooks) == 0 {
		return events.Nop{}, nil
	}
	s, err := events.New(&cfg.Events, events.Options{Log: log})
	if err != nil {
		return nil, err
	}
	for _, w := range cfg.Events.Webhooks {
		log.Info("sending events", "subscriber", w.Name, "format", w.Format, "types", w.Types, "signed", w.SecretFile != "")
	}
	return s, nil
}

// closeEvents delivers the events still queued, within
// server.shutdownTimeout, and stops the sender.
func closeEvents(p events.Publisher, cfg *config.Config) error {
	s, ok := p.(*events.Sender)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.Server.ShutdownTimeout.D())
	defer cancel()
	return s.Close(ctx)
}

// staleWatch tells when the vulnerability DB became older than
// gate.db.maxAge: once, and again after it was fresh in between.
type staleWatch struct{ stale bool }

// check reports whether a DB built at built is newly stale at now.
func (w *staleWatch) check(built, now time.Time, maxAge time.Duration) bool {
	stale := maxAge > 0 && !built.IsZero() && now.Sub(built) > maxAge
	newly := stale && !w.stale
	w.stale = stale
	return newly
}

// dbStaleInterval is how often dbStaleLoop looks at the DB's age.
const dbStaleInterval = time.Minute

// dbStaleLoop publishes events.DBStale when the loaded DB becomes older
// than gate.db.maxAge (at start too), until ctx ends. Without maxAge it
// returns at once.
func dbStaleLoop(ctx context.Context, st *stack) {
	maxAge := st.cfg.Gate.DB.MaxAge.D()
	if maxAge <= 0 {
		return
	}
	var w staleWatch
	t := time.NewTicker(dbStaleInterval)
	defer t.Stop()
	for {
		if s, err := st.scanner.DBStatus(); err == nil {
			now := time.Now()
			if w.check(s.UpdatedAt, now, maxAge) {
				st.log.Warn("the vulnerability DB is older than gate.db.maxAge", "updatedAt", s.UpdatedAt, "maxAge", maxAge)
				st.events.Publish(events.Stale(now, events.DBStaleData{Version: s.DBVersion, UpdatedAt: s.UpdatedAt,
					AgeSeconds: int64(now.Sub(s.UpdatedAt) / time.Second), MaxAge: config.Duration(maxAge).String()}))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
