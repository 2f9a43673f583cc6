package events

import (
	"container/list"
	"sync"
	"time"
)

// maxRepeatKeys bounds the events a coalescer remembers: past it, the
// least recently seen is forgotten (and its uncounted repeats with it).
const maxRepeatKeys = 10000

// coalescer keeps one subscriber from being flooded with the same event:
// a denied DaemonSet on every node is refused at each kubelet back-off,
// twice (HEAD, GET). After an event is sent, the same event (by
// repeatKey) again within window is only counted; the first one sent
// after the window carries that count (Event.repeats).
type coalescer struct {
	window time.Duration
	max    int
	now    func() time.Time

	mu    sync.Mutex
	seen  map[string]*list.Element // of *repeat, in order
	order *list.List               // front: the most recently seen
}

// repeat is what a coalescer remembers of one event.
type repeat struct {
	key     string
	sent    time.Time // when it was last sent
	repeats int       // left out since
}

func newCoalescer(window time.Duration, max int, now func() time.Time) *coalescer {
	return &coalescer{window: window, max: max, now: now, seen: map[string]*list.Element{}, order: list.New()}
}

// offer hands e to send unless it repeats an event sent within the
// window, in which case it only counts it and reports true. send reports
// whether it took e: one it did not take (a full queue) is not "sent",
// and the repeats it would have carried wait for the next.
func (c *coalescer) offer(e Event, send func(Event) bool) (coalesced bool) {
	key := e.repeatKey()
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	el := c.seen[key]
	if el != nil {
		r := el.Value.(*repeat)
		c.order.MoveToFront(el)
		if now.Sub(r.sent) < c.window {
			r.repeats++
			return true
		}
		e.repeats = r.repeats
	}
	if !send(e) {
		return false
	}
	if el != nil {
		r := el.Value.(*repeat)
		r.sent, r.repeats = now, 0
		return false
	}
	c.seen[key] = c.order.PushFront(&repeat{key: key, sent: now})
	if c.order.Len() > c.max {
		delete(c.seen, c.order.Remove(c.order.Back()).(*repeat).key)
	}
	return false
}

// repeatKey is what makes two events the same for coalescing: the key
// the constructor chose (Denied: type and image digest, whatever the tag
// or client; Changed: also the new verdict), else the type and subject.
func (e *Event) repeatKey() string {
	if e.key != "" {
		return e.key
	}
	return e.Type + "\x00" + e.Subject
}
