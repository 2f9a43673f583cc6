package upstream

import (
	"context"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse/gatehouse/metrics"
)

// limiter bounds the requests to one upstream in flight at once
// (upstreams.maxConcurrentFetches). A request waits for a slot for at most
// wait, then fails with a 503 that tells the client to retry.
type limiter struct {
	slots    chan struct{} // nil: no limit
	wait     time.Duration
	upstream string
	inFlight prometheus.Gauge
	queued   prometheus.Gauge
}

func newLimiter(upstream string, n int, wait time.Duration) *limiter {
	l := &limiter{wait: wait, upstream: upstream,
		inFlight: metrics.UpstreamInFlight.WithLabelValues(upstream),
		queued:   metrics.UpstreamQueued.WithLabelValues(upstream)}
	if n > 0 {
		l.slots = make(chan struct{}, n)
	}
	return l
}

// acquire takes a slot and returns its release func (safe to call more
// than once).
func (l *limiter) acquire(ctx context.Context) (func(), error) {
	if l.slots != nil {
		select {
		case l.slots <- struct{}{}:
		default:
			l.queued.Inc()
			t := time.NewTimer(l.wait)
			select {
			case l.slots <- struct{}{}:
			case <-ctx.Done():
				l.queued.Dec()
				t.Stop()
				return nil, ctx.Err()
			case <-t.C:
				l.queued.Dec()
				metrics.UpstreamQueueTimeouts.WithLabelValues(l.upstream).Inc()
				return nil, &Error{Upstream: l.upstream, Status: http.StatusServiceUnavailable, RetryAfter: "1", Busy: true,
					Message: "too many requests to this upstream in flight (maxConcurrentFetches); waited " + l.wait.String() + " for a slot"}
			}
			l.queued.Dec()
			t.Stop()
		}
	}
	l.inFlight.Inc()
	var once sync.Once
	return func() {
		once.Do(func() {
			l.inFlight.Dec()
			if l.slots != nil {
				<-l.slots
			}
		})
	}, nil
}

// releasingBody gives the slot back when the body is closed.
type releasingBody struct {
	io.ReadCloser
	release func()
}

func (b *releasingBody) Close() error {
	err := b.ReadCloser.Close()
	b.release()
	return err
}
