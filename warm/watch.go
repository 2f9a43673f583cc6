package warm

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/metrics"
	"github.com/gatehouse/gatehouse/pull"
)

// imageTimeout bounds the warming of one new digest (a scan of a large
// image included).
const imageTimeout = 30 * time.Minute

// Watcher keeps the tags of gate.watch judged: one loop per watched
// repository polls at its interval. Errors are logged and counted
// (gatehouse_watch_polls_total, gatehouse_watch_images_warmed_total),
// never fatal; one repository failing does not stop the others.
type Watcher struct {
	content Content
	warmer  *Warmer
	watches []config.Watch
	log     *slog.Logger
}

// NewWatcher returns the watcher of watches (validated by config).
func NewWatcher(content Content, g Gate, watches []config.Watch, log *slog.Logger) *Watcher {
	if log == nil {
		log = slog.Default()
	}
	return &Watcher{content: content, warmer: New(content, g, "gate.watch", log), watches: watches, log: log}
}

// Run polls every watched repository until ctx ends: the first time
// within a tenth of its interval, then every interval give or take a
// tenth (so that repositories and replicas spread their requests).
func (w *Watcher) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for i := range w.watches {
		wg.Go(func() { w.loop(ctx, &w.watches[i]) })
	}
	wg.Wait()
}

func (w *Watcher) loop(ctx context.Context, wt *config.Watch) {
	st := newState()
	interval := wt.Interval.D()
	delay := time.Duration(rand.Int64N(int64(interval/10) + 1))
	for {
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		w.Poll(ctx, wt, st)
		delay = interval - interval/10 + time.Duration(rand.Int64N(int64(interval/5)+1))
	}
}

// State is what a watch remembers between polls: the digests it warmed.
// It lives in memory only; after a restart each tag's digest is judged
// again, which costs a verdict lookup once verdicts are stored.
type State struct {
	warmed map[v1.Hash]bool
}

func newState() *State { return &State{warmed: map[v1.Hash]bool{}} }

// NewState returns an empty State (for Poll).
func NewState() *State { return newState() }

// remember records a digest warmed, forgetting all when too many are
// kept (the next poll then only looks the verdicts up again).
func (s *State) remember(dgst v1.Hash, max int) {
	if len(s.warmed) >= 4*max {
		clear(s.warmed)
	}
	s.warmed[dgst] = true
}

// Poll checks the tags of one watched repository once: it selects the
// tags (listing them when a pattern is a glob; the literal ones are asked
// about even when the list cannot be read), asks upstream for each
// one's digest (HEAD) and warms every digest not warmed before. It
// reports whether everything succeeded.
func (w *Watcher) Poll(ctx context.Context, wt *config.Watch, st *State) bool {
	log := w.log.With("repository", wt.Repository)
	ok := true
	tags, err := w.tags(ctx, wt)
	if err != nil {
		// The literal tags are still asked about.
		log.Warn("gate.watch: listing tags failed", "err", err)
		ok = false
	}
	for _, tag := range tags {
		if ctx.Err() != nil {
			return false
		}
		dgst, err := w.content.ResolveTag(ctx, wt.Upstream, wt.Repo, tag)
		if pull.IsNotFound(err) {
			log.Debug("gate.watch: tag not found upstream", "tag", tag)
			continue
		}
		if err != nil {
			log.Warn("gate.watch: resolving tag failed", "tag", tag, "err", err)
			ok = false
			continue
		}
		if st.warmed[dgst] {
			continue
		}
		if !w.warm(ctx, wt, tag, dgst, log) {
			ok = false
			continue
		}
		st.remember(dgst, wt.MaxTags)
	}
	if ctx.Err() != nil {
		return false // shutting down: the poll is not counted
	}
	result := "ok"
	if !ok {
		result = "error"
	}
	metrics.WatchPolls.WithLabelValues(result).Inc()
	return ok
}

// warm warms one new digest of a tag and counts it; it reports whether
// the digest is done with (judged, or an index without the platforms).
func (w *Watcher) warm(parent context.Context, wt *config.Watch, tag string, dgst v1.Hash, log *slog.Logger) bool {
	ctx, cancel := context.WithTimeout(parent, imageTimeout)
	defer cancel()
	start := time.Now()
	res, err := w.warmer.Warm(ctx, Ref{Upstream: wt.Upstream, Repo: wt.Repo, Tag: tag, Digest: &dgst}, wt.Platforms)
	var np *NoPlatformError
	switch {
	case parent.Err() != nil:
		return false // shutting down: not a failure of the image
	case errors.As(err, &np):
		log.Info("gate.watch: new digest lists none of the watched platforms", "tag", tag, "digest", dgst, "platforms", wt.Platforms)
		return true
	case err != nil:
		metrics.WatchImagesWarmed.WithLabelValues("error").Inc()
		log.Warn("gate.watch: warming failed; tried again at the next poll", "tag", tag, "digest", dgst, "err", err)
		return false
	case res.Admitted():
		metrics.WatchImagesWarmed.WithLabelValues("admitted").Inc()
	default:
		metrics.WatchImagesWarmed.WithLabelValues("denied").Inc()
	}
	var blobs int
	var size int64
	for _, im := range res.Images {
		blobs, size = blobs+im.Blobs, size+im.Bytes
	}
	log.Info("gate.watch: judged a new digest before any client asked", "tag", tag, "digest", dgst,
		"admitted", res.Admitted(), "images", len(res.Images), "blobs", blobs, "bytes", size, "duration", time.Since(start).Round(time.Millisecond))
	return true
}

// Cluster runs work on one replica at a time (package cluster's Node).
type Cluster interface {
	// Once runs do under the lease name unless another replica holds it
	// (have nil: it then returns at once); do's ctx ends when the lease
	// is lost.
	Once(ctx context.Context, kind, name string, have func(context.Context) (bool, error), do func(context.Context) error) error
}

// RunLeader is Run on a cluster of replicas: only the replica holding the
// watch lease polls (the lease is renewed while it does); the others try
// to take it every retry, so that one takes over within about a retry
// and the lease's TTL when the holder dies or stops.
func (w *Watcher) RunLeader(ctx context.Context, cl Cluster, retry time.Duration) {
	for {
		err := cl.Once(ctx, "watch", "gate.watch", nil, func(ctx context.Context) error {
			w.log.Info("gate.watch: this replica polls the watched repositories")
			w.Run(ctx)
			return nil
		})
		if err != nil && ctx.Err() == nil {
			w.log.Warn("gate.watch: taking the watch lease failed; trying again", "err", err)
		}
		t := time.NewTimer(retry)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}
