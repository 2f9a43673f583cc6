package config

import (
	"strings"
	"testing"
	"time"
)

func TestExceptionsConfig(t *testing.T) {
	base := "upstreams: [{name: docker.io}]\ngate:\n  exceptions: "
	c, err := Parse([]byte(base + "{path: /etc/gatehouse/exceptions}"))
	if err != nil {
		t.Fatal(err)
	}
	if e := c.Gate.Exceptions; e.ReloadInterval.D() != 30*time.Second || e.WarnBefore.D() != 168*time.Hour || e.Path != "/etc/gatehouse/exceptions" {
		t.Fatalf("defaults: %+v", e)
	}
	for yml, want := range map[string]string{
		"{reloadInterval: 500ms}": "config: gate.exceptions.reloadInterval: must be between 1s and 1h",
		"{reloadInterval: 2h}":    "config: gate.exceptions.reloadInterval: must be between 1s and 1h",
		"{warnBefore: -1h}":       "config: gate.exceptions.warnBefore: must not be negative",
	} {
		if _, err := Parse([]byte(base + yml)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want %q", yml, err, want)
		}
	}
}
