package gate

import (
	"sync"
	"time"
)

// Denial is one refused pull.
type Denial struct {
	Time     time.Time `json:"time"`
	Client   string    `json:"client,omitempty"`
	Upstream string    `json:"upstream"`
	Repo     string    `json:"repository"`
	Tag      string    `json:"tag,omitempty"`
	Digest   string    `json:"digest"`
	Rule     string    `json:"rule"`
	Message  string    `json:"message"`
}

// denialLog keeps the most recent denials in memory.
type denialLog struct {
	mu   sync.Mutex
	buf  []Denial
	next int
	full bool
}

func newDenialLog(n int) *denialLog { return &denialLog{buf: make([]Denial, n)} }

func (l *denialLog) add(d Denial) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf[l.next] = d
	l.next = (l.next + 1) % len(l.buf)
	if l.next == 0 {
		l.full = true
	}
}

// recent returns the denials, newest first.
func (l *denialLog) recent() []Denial {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.next
	if l.full {
		n = len(l.buf)
	}
	out := make([]Denial, 0, n)
	for i := 1; i <= n; i++ {
		out = append(out, l.buf[(l.next-i+len(l.buf))%len(l.buf)])
	}
	return out
}

// Denials returns recent refused pulls, newest first.
func (g *Gate) Denials() []Denial { return g.denials.recent() }
