package gate

import (
	"testing"

	"go.uber.org/goleak"
)

// Every scan job, background re-evaluation and HTTP server a test starts
// must be gone when the tests end.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
