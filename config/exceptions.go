package config

import (
	"fmt"
	"time"
)

// Exceptions configures the scoped vulnerability exceptions, kept in their
// own file or directory of files (package gate/exceptions; the format is in
// docs/policy.md, "Exceptions"). They are read at start-up (an error stops
// gatehouse) and checked for changes every ReloadInterval: a change is
// applied without a restart, and a file that no longer loads keeps the
// exceptions read before (logged and counted).
type Exceptions struct {
	// Path is a YAML file, or a directory whose *.yaml and *.yml files
	// (not its subdirectories, nor names starting with ".") are read.
	// Unset: no exceptions.
	Path string `yaml:"path,omitempty"`
	// ReloadInterval is how often the files are checked for changes
	// (by content). Unset or 0: 30s; at least 1s, at most 1h.
	ReloadInterval Duration `yaml:"reloadInterval"`
	// WarnBefore is how long before its expiry an exception counts as
	// expiring: reported by metric, event and console. Unset or 0: 168h
	// (a week).
	WarnBefore Duration `yaml:"warnBefore"`
}

// Defaults of Exceptions.
const (
	DefaultExceptionsReloadInterval = 30 * time.Second
	DefaultExceptionsWarnBefore     = 7 * 24 * time.Hour
)

func (e *Exceptions) finish() []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: gate.exceptions.%s: %s", field, fmt.Sprintf(format, args...)))
	}
	setDur(&e.ReloadInterval, DefaultExceptionsReloadInterval)
	if d := e.ReloadInterval.D(); d < time.Second || d > time.Hour {
		bad("reloadInterval", "must be between 1s and 1h, not %s", e.ReloadInterval)
	}
	setDur(&e.WarnBefore, DefaultExceptionsWarnBefore)
	if e.WarnBefore < 0 {
		bad("warnBefore", "must not be negative")
	}
	return errs
}
