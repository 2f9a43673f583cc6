package events

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate/policy"
	"github.com/gatehouse/gatehouse/metrics"
)

// Sender delivers events to the configured webhooks: one bounded queue and
// one worker goroutine per subscriber. Publish filters, coalesces repeats
// (a webhook's repeatWindow) and enqueues, and never waits; a full queue
// drops the event and counts it.
type Sender struct {
	subs    []*subscriber
	log     *slog.Logger
	closed  atomic.Bool
	closing chan struct{} // closed by Close: drain the queues, then stop
	stop    context.CancelFunc
	wg      sync.WaitGroup
}

var _ Publisher = (*Sender)(nil)

// Options configure a Sender.
type Options struct {
	Log *slog.Logger
	// Now is the clock of the signatures' timestamps and of the
	// webhooks' repeatWindow. Default time.Now.
	Now func() time.Time
	// sleep waits between attempts (tests record it instead). Default:
	// a timer, cut short by ctx.
	sleep func(ctx context.Context, d time.Duration) error
	// backoff is the first wait between attempts, doubled after each
	// failure up to the webhook's maxBackoff. Default 1s.
	backoff time.Duration
	// repeatKeys bounds the events each subscriber remembers for its
	// repeatWindow. Default maxRepeatKeys.
	repeatKeys int
}

// New starts a Sender for cfg (finished by config). With no webhooks it
// still works and sends nothing.
func New(cfg *config.Events, opts Options) (*Sender, error) {
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.sleep == nil {
		opts.sleep = sleep
	}
	if opts.backoff == 0 {
		opts.backoff = time.Second
	}
	if opts.repeatKeys == 0 {
		opts.repeatKeys = maxRepeatKeys
	}
	ctx, stop := context.WithCancel(context.Background())
	s := &Sender{log: opts.Log, closing: make(chan struct{}), stop: stop}
	for i := range cfg.Webhooks {
		sub, err := newSubscriber(&cfg.Webhooks[i], cfg.Source, &opts)
		if err != nil {
			stop()
			return nil, err
		}
		s.subs = append(s.subs, sub)
	}
	for _, sub := range s.subs {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			sub.run(ctx, s.closing)
		}()
	}
	return s, nil
}

// Publish implements Publisher: it hands e to every subscriber whose
// filters it passes, without waiting.
func (s *Sender) Publish(e Event) {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	for _, sub := range s.subs {
		if !sub.wants(&e) {
			continue
		}
		if s.closed.Load() {
			sub.count(e.Type, "dropped")
			continue
		}
		sub.offer(e)
	}
}

// Close stops taking events and delivers those queued until ctx ends;
// what is left then is dropped (and counted).
func (s *Sender) Close(ctx context.Context) error {
	if s.closed.Swap(true) {
		return nil
	}
	close(s.closing)
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.stop() // attempts in flight end; the rest is dropped
		<-done
	}
	s.stop()
	for _, sub := range s.subs {
		// Published between the check of closed and the workers' end.
		for len(sub.queue) > 0 {
			sub.queued.Dec()
			sub.count((<-sub.queue).Type, "dropped")
		}
		sub.deliverer.client.CloseIdleConnections()
	}
	return nil
}

// subscriber is one webhook: its filters, its queue and its delivery.
type subscriber struct {
	cfg       *config.Webhook
	types     []string // empty: all
	queue     chan Event
	queued    prometheus.Gauge
	deliverer *deliverer
	repeats   *coalescer // nil: repeatWindow 0, every event is sent
}

func newSubscriber(w *config.Webhook, source string, opts *Options) (*subscriber, error) {
	d, err := newDeliverer(w, source, opts)
	if err != nil {
		return nil, err
	}
	types := w.Types
	if len(types) == 0 {
		types = Types
	}
	metrics.InitEventSubscriber(w.Name, types)
	sub := &subscriber{cfg: w, types: w.Types, queue: make(chan Event, w.QueueSize),
		queued: metrics.EventQueueLength.WithLabelValues(w.Name), deliverer: d}
	if w.RepeatWindow != nil && *w.RepeatWindow > 0 {
		sub.repeats = newCoalescer(w.RepeatWindow.D(), opts.repeatKeys, opts.Now)
	}
	return sub, nil
}

// wants reports whether e passes the subscriber's filters. An event about
// no image passes the upstream and repository filters.
func (s *subscriber) wants(e *Event) bool {
	if len(s.types) > 0 && !slices.Contains(s.types, e.Type) {
		return false
	}
	if e.Upstream == "" && e.Repo == "" {
		return true
	}
	if len(s.cfg.Upstreams) > 0 && !slices.ContainsFunc(s.cfg.Upstreams, func(u string) bool { return strings.EqualFold(u, e.Upstream) }) {
		return false
	}
	return len(s.cfg.Repositories) == 0 || slices.ContainsFunc(s.cfg.Repositories, func(g string) bool { return policy.MatchRepo(g, e.Repo) })
}

// offer enqueues e unless it repeats one sent within the repeatWindow
// (counted as coalesced), or drops it when the queue is full.
func (s *subscriber) offer(e Event) {
	if s.repeats == nil {
		s.enqueue(e)
	} else if s.repeats.offer(e, s.enqueue) {
		s.count(e.Type, "coalesced")
	}
}

// enqueue queues e and reports true, or drops and counts it when the
// queue is full.
func (s *subscriber) enqueue(e Event) bool {
	select {
	case s.queue <- e:
		s.queued.Inc()
		return true
	default:
		s.count(e.Type, "dropped")
		return false
	}
}

func (s *subscriber) count(typ, outcome string) {
	metrics.Events.WithLabelValues(s.cfg.Name, typ, outcome).Inc()
}

// run delivers queued events one at a time until closing, then what is
// still queued, until ctx ends.
func (s *subscriber) run(ctx context.Context, closing <-chan struct{}) {
	for {
		select {
		case e := <-s.queue:
			s.handle(ctx, e)
		case <-closing:
			for {
				select {
				case e := <-s.queue:
					s.handle(ctx, e)
				default:
					return
				}
			}
		}
	}
}

func (s *subscriber) handle(ctx context.Context, e Event) {
	s.queued.Dec()
	s.count(e.Type, s.deliverer.deliver(ctx, e))
}
