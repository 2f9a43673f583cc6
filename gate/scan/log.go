package scan

import (
	"context"
	"log/slog"
	"os"
	"runtime"
	"strings"

	"github.com/aquasecurity/trivy/pkg/log"
)

func init() {
	restoreDefaultLogger()
}

// restoreDefaultLogger replaces Trivy's buffering default handler (installed
// by the init of trivy/pkg/log, it keeps every record in memory until
// Trivy's CLI flushes it) with a text handler on standard error. Any other
// default handler is left alone.
func restoreDefaultLogger() {
	if _, ok := slog.Default().Handler().(*log.DeferredHandler); ok {
		slog.SetDefault(slog.New(slog.NewTextHandler(os.Stderr, nil)))
	}
}

// TrivyLogLevel wraps h so that records logged by Trivy's code (functions
// of github.com/aquasecurity/...) below min are dropped; every other record
// passes unchanged. Trivy logs a few INFO lines per scan ("Detected OS",
// "Detecting vulnerabilities..."); a server would rather set, in main:
//
//	slog.SetDefault(slog.New(scan.TrivyLogLevel(h, slog.LevelWarn)))
func TrivyLogLevel(h slog.Handler, min slog.Level) slog.Handler {
	return trivyFilter{h: h, min: min}
}

type trivyFilter struct {
	h   slog.Handler
	min slog.Level
}

func (f trivyFilter) Enabled(ctx context.Context, l slog.Level) bool { return f.h.Enabled(ctx, l) }

func (f trivyFilter) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < f.min && r.PC != 0 {
		fr, _ := runtime.CallersFrames([]uintptr{r.PC}).Next()
		if strings.HasPrefix(fr.Function, "github.com/aquasecurity/") {
			return nil
		}
	}
	return f.h.Handle(ctx, r)
}

func (f trivyFilter) WithAttrs(as []slog.Attr) slog.Handler {
	return trivyFilter{h: f.h.WithAttrs(as), min: f.min}
}

func (f trivyFilter) WithGroup(name string) slog.Handler {
	return trivyFilter{h: f.h.WithGroup(name), min: f.min}
}
