package sign

import (
	"strings"
	"testing"
)

func TestGuard(t *testing.T) {
	_, err := guard(func() (int, error) {
		var s []int
		return s[0], nil // the kind of panic cosign v2.6.5 has on unverifiable RFC 3161 timestamps
	})
	if err == nil || !strings.Contains(err.Error(), "panicked") {
		t.Fatalf("guard: %v, want a panic error", err)
	}
	n, err := guard(func() (int, error) { return 7, nil })
	if n != 7 || err != nil {
		t.Fatalf("guard = %d, %v", n, err)
	}
}
