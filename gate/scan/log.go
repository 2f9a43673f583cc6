package scan

import (
	"log/slog"
	"os"

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
