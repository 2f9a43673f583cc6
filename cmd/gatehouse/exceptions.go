package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate/exceptions"
)

// openExceptions reads gate.exceptions.path; nil when unset. A file that
// does not load is an error: gatehouse does not start without the
// exceptions it was given.
func openExceptions(cfg *config.Config, log *slog.Logger) (*exceptions.Store, error) {
	e := cfg.Gate.Exceptions
	if e.Path == "" {
		return nil, nil
	}
	st, err := exceptions.Open(exceptions.Options{Path: e.Path, WarnBefore: e.WarnBefore.D(), Log: log,
		Upstream: func(name string) (string, bool) {
			if u := cfg.Upstream(name); u != nil {
				return u.Name, true
			}
			return "", false
		}})
	if err != nil {
		return nil, fmt.Errorf("config: gate.exceptions.path: %w", err)
	}
	return st, nil
}

// exceptionsMarker records the digest of the exception files the stored
// verdicts were last judged with.
func exceptionsMarker(cfg *config.Config) string {
	return filepath.Join(cfg.DataDir, "exceptions-digest")
}

// exceptionsLoop keeps the exceptions current: at start, it judges the
// stored images again when the exceptions differ from those they were
// judged with (changed or removed while gatehouse was down); then, every
// gate.exceptions.reloadInterval, it reloads changed files, reports the
// exceptions (metrics, an event for each one entering warnBefore), and
// judges the stored images again when the exceptions changed or one
// expired.
func exceptionsLoop(ctx context.Context, st *stack) {
	now := time.Now()
	rejudge := st.excepts != nil && st.excepts.Check(now, st.gate.EventPublisher())
	if exceptionsDigest(st) != readMarker(st.cfg) || rejudge {
		rejudgeForExceptions(ctx, st, "the exceptions differ from those the stored verdicts were judged with")
	}
	if st.excepts == nil {
		return
	}
	t := time.NewTicker(st.cfg.Gate.Exceptions.ReloadInterval.D())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			changed, err := st.excepts.Reload()
			if err != nil {
				st.log.Error("exceptions could not be reloaded; keeping those read before", "path", st.cfg.Gate.Exceptions.Path, "err", err)
			}
			expired := st.excepts.Check(now, st.gate.EventPublisher())
			switch {
			case changed:
				rejudgeForExceptions(ctx, st, "the exceptions changed")
			case expired:
				rejudgeForExceptions(ctx, st, "an exception expired")
			}
		}
	}
}

// rejudgeForExceptions judges the stored images again and, when that
// worked, records the exceptions they were judged with.
func rejudgeForExceptions(ctx context.Context, st *stack, why string) {
	digest := exceptionsDigest(st)
	res, err := st.gate.Reevaluate(ctx)
	if err != nil {
		st.log.Warn("re-judging images for the exceptions", "why", why, "err", err)
		return
	}
	st.log.Info("images judged again for the exceptions", "why", why, "images", res.Images, "flipped", res.Flipped, "failed", res.Failed)
	if res.Failed > 0 {
		return // tried again at the next start
	}
	marker := exceptionsMarker(st.cfg)
	if digest == "" {
		err = os.Remove(marker)
		if errors.Is(err, os.ErrNotExist) {
			err = nil
		}
	} else {
		err = os.WriteFile(marker, []byte(digest), 0o640)
	}
	if err != nil {
		st.log.Error("recording the exceptions judged with", "err", err)
	}
}

// exceptionsDigest identifies the exceptions in force; "" when none.
func exceptionsDigest(st *stack) string {
	if st.excepts == nil {
		return ""
	}
	return st.excepts.Digest()
}

func readMarker(cfg *config.Config) string {
	b, _ := os.ReadFile(exceptionsMarker(cfg))
	return strings.TrimSpace(string(b))
}
