package upstream_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every token fetch, retry and response body of the upstream client must be
// finished or closed when the tests end.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
