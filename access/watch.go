package access

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gatehouse/gatehouse/metrics"
)

// checkEvery is how often, at most, the files are looked at again: one
// stat per file a second, whatever the request rate.
const checkEvery = time.Second

// watched holds what was loaded from one or more files, and loads it again
// when any of them changes (modification time, size or inode: a Kubernetes
// Secret volume swaps a symlink, an editor renames over the file). A load
// that fails keeps the previous value, and is logged and counted once per
// change of the files.
type watched[T any] struct {
	kind  string // metrics label and log attribute
	paths []string
	load  func() (T, error)
	log   *slog.Logger
	every time.Duration

	val     atomic.Pointer[T]
	checked atomic.Int64 // unix nanoseconds of the last look
	mu      sync.Mutex   // one look at a time; others use the current value
	stamp   string       // of the files last looked at
}

// newWatched loads the value once; an error here is a start-up error.
func newWatched[T any](kind string, paths []string, load func() (T, error), log *slog.Logger) (*watched[T], error) {
	w := &watched[T]{kind: kind, paths: paths, load: load, log: log, every: checkEvery}
	w.stamp = w.fileStamp()
	v, err := load()
	if err != nil {
		return nil, err
	}
	w.val.Store(&v)
	w.checked.Store(time.Now().UnixNano())
	return w, nil
}

// get returns the current value, loading the files again first if they
// changed since the last look (at most one look per w.every).
func (w *watched[T]) get() T {
	now := time.Now().UnixNano()
	if now-w.checked.Load() < int64(w.every) || !w.mu.TryLock() {
		return *w.val.Load()
	}
	defer w.mu.Unlock()
	w.checked.Store(now)
	stamp := w.fileStamp()
	if stamp == w.stamp {
		return *w.val.Load()
	}
	w.stamp = stamp
	v, err := w.load()
	if err != nil {
		metrics.AccessReloads.WithLabelValues(w.kind, "error").Inc()
		w.log.Error("reloading a changed file failed; keeping the previous contents", "file", w.kind, "err", err)
		return *w.val.Load()
	}
	metrics.AccessReloads.WithLabelValues(w.kind, "ok").Inc()
	w.log.Info("reloaded a changed file", "file", w.kind)
	w.val.Store(&v)
	return v
}

// fileStamp identifies the current version of the files; a missing file
// has its error as its stamp (so its return counts as a change).
func (w *watched[T]) fileStamp() string {
	var sb strings.Builder
	for _, p := range w.paths {
		fi, err := os.Stat(p)
		if err != nil {
			fmt.Fprintf(&sb, "%v|", err)
			continue
		}
		var ino uint64
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			ino = st.Ino
		}
		fmt.Fprintf(&sb, "%d/%d/%d|", fi.ModTime().UnixNano(), fi.Size(), ino)
	}
	return sb.String()
}
