package warm

import "time"

// SetRetry sets the pause before asking the gate again (tests).
func SetRetry(w *Warmer, d time.Duration) { w.retry = d }

// SelectTags and NextPage are exported for the tests.
var (
	SelectTags = selectTags
	NextPage   = nextPage
)

// ListTags is Watcher.listTags, for the tests.
var ListTags = (*Watcher).listTags
