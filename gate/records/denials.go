package records

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/metrics"
	"github.com/gatehouse/gatehouse/storage"
)

// tableDenials holds the denial record: key = the denial's time in Unix
// nanoseconds (8 bytes, big-endian) + the table's sequence (8 bytes), so
// that keys sort oldest first, the newest are read from the end, and
// trimming (by count or age) deletes a prefix.
const tableDenials = "denials"

const denialKeyLen = 16

// DenialBatch is the queue length at which RunDenials writes at once
// instead of waiting for its ticker: a denial storm costs one write per
// batch, never one per denial.
const DenialBatch = 100

func denialKey(t time.Time, seq uint64) []byte {
	k := make([]byte, denialKeyLen)
	binary.BigEndian.PutUint64(k, uint64(t.UnixNano()))
	binary.BigEndian.PutUint64(k[8:], seq)
	return k
}

// denialTime reads the time of a key; the zero time for a key that is not
// a denial key, so that trimming by age removes it.
func denialTime(k []byte) time.Time {
	if len(k) != denialKeyLen {
		return time.Time{}
	}
	return time.Unix(0, int64(binary.BigEndian.Uint64(k)))
}

// denialLog keeps the latest denials in memory for the API and the console
// (a ring of gate.denials.keep) and queues those not yet written to the
// database. Reads never touch the database.
type denialLog struct {
	keep int

	mu    sync.Mutex
	buf   []Denial // ring, grows to keep
	next  int      // where the next denial goes
	queue []Denial // not yet written, oldest first
	kick  chan struct{}

	flushMu sync.Mutex // one write at a time, so that batches land in order
	stored  int        // keys in the table after the last write; under flushMu
}

func newDenialLog(keep int) *denialLog {
	keep = cmp.Or(keep, config.DefaultDenialsKeep)
	return &denialLog{keep: keep, kick: make(chan struct{}, 1)}
}

// remember puts d into the ring only (a denial loaded from the database).
func (l *denialLog) remember(d Denial) {
	if len(l.buf) < l.keep {
		l.buf = append(l.buf, d)
		l.next = len(l.buf) % l.keep
		return
	}
	l.buf[l.next] = d
	l.next = (l.next + 1) % l.keep
}

// add records a new denial and queues it for the database.
func (l *denialLog) add(d Denial) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.remember(d)
	l.queue = append(l.queue, d)
	if len(l.queue) > 2*l.keep {
		// Writes are failing: what falls out of the latest keep would be
		// trimmed as soon as it was written, so let it go.
		l.queue = slices.Clone(l.queue[len(l.queue)-l.keep:])
	}
	if len(l.queue) >= DenialBatch {
		select {
		case l.kick <- struct{}{}:
		default:
		}
	}
}

// take empties the queue and returns what it held.
func (l *denialLog) take() []Denial {
	l.mu.Lock()
	defer l.mu.Unlock()
	q := l.queue
	l.queue = nil
	return q
}

// requeue puts a batch that could not be written back before the denials
// queued since, keeping at most keep of them.
func (l *denialLog) requeue(batch []Denial) {
	l.mu.Lock()
	defer l.mu.Unlock()
	q := append(batch, l.queue...)
	if len(q) > l.keep {
		q = slices.Clone(q[len(q)-l.keep:])
	}
	l.queue = q
}

// recent returns the denials at or after cutoff (all when it is zero),
// newest first.
func (l *denialLog) recent(cutoff time.Time) []Denial {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(l.buf)
	out := make([]Denial, 0, n)
	for i := 1; i <= n; i++ {
		d := l.buf[(l.next-i+n)%n]
		if d.Time.Before(cutoff) {
			continue
		}
		out = append(out, d)
	}
	return out
}

// AddDenial records a refused pull: in memory at once, in the database by
// the next flush. It never blocks on the database.
func (s *Store) AddDenial(d Denial) { s.denials.add(d) }

// Denials returns recent refused pulls, newest first: the latest
// gate.denials.keep, younger than gate.denials.maxAge when it is set,
// including those recorded before gatehouse last started.
// With shared records they are read from the database (every replica's),
// with this replica's not yet written.
func (s *Store) Denials() []Denial {
	cutoff := s.denialCutoff()
	if !s.shared {
		return s.denials.recent(cutoff)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out []Denial
	err := s.meta.View(ctx, func(tx storage.Tx) error {
		return tx.Scan(tableDenials, nil, true, func(k, v []byte) (bool, error) {
			if len(out) >= s.denials.keep || denialTime(k).Before(cutoff) {
				return false, nil
			}
			var d Denial
			if len(k) == denialKeyLen && json.Unmarshal(v, &d) == nil {
				out = append(out, d)
			}
			return true, nil
		})
	})
	if err != nil {
		s.log.Warn("reading the cluster's denials; showing this replica's", "err", err)
		return s.denials.recent(cutoff)
	}
	s.denials.mu.Lock()
	for _, d := range s.denials.queue {
		if !d.Time.Before(cutoff) {
			out = append(out, d)
		}
	}
	s.denials.mu.Unlock()
	slices.SortStableFunc(out, func(a, b Denial) int { return b.Time.Compare(a.Time) })
	return out[:min(len(out), s.denials.keep)]
}

// denialCutoff is the time before which denials are too old to keep; zero
// when gate.denials.maxAge is not set.
func (s *Store) denialCutoff() time.Time {
	if s.maxAge > 0 {
		return s.now().Add(-s.maxAge)
	}
	return time.Time{}
}

// loadDenials reads the denial record into memory at start-up, newest
// first, and trims it to the configured bounds (which may have shrunk
// since it was written). A record that does not decode is skipped.
func (s *Store) loadDenials(ctx context.Context) error {
	l := s.denials
	cutoff := s.denialCutoff()
	var loaded []Denial // newest first
	err := s.meta.Update(ctx, func(tx storage.Tx) error {
		n := 0
		err := tx.Scan(tableDenials, nil, true, func(k, v []byte) (bool, error) {
			n++
			if n > l.keep || denialTime(k).Before(cutoff) {
				return true, nil
			}
			var d Denial
			err := fmt.Errorf("key of %d bytes, not %d", len(k), denialKeyLen)
			if len(k) == denialKeyLen {
				err = json.Unmarshal(v, &d)
			}
			if err != nil {
				s.log.Warn("skipping a denial record that does not decode", "key", hex.EncodeToString(k), "err", err)
				return true, nil
			}
			loaded = append(loaded, d)
			return true, nil
		})
		if err != nil {
			return err
		}
		stored, err := trimDenials(tx, n, l.keep, cutoff)
		l.stored = stored
		return err
	})
	if err != nil {
		return fmt.Errorf("loading denials: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, d := range slices.Backward(loaded) {
		l.remember(d)
	}
	return nil
}

// trimDenials deletes the oldest records until at most keep of the n in
// the table are left and none is older than cutoff (when set). It returns
// how many are left.
func trimDenials(tx storage.Tx, n, keep int, cutoff time.Time) (int, error) {
	var old [][]byte
	err := tx.Scan(tableDenials, nil, false, func(k, _ []byte) (bool, error) {
		if n-len(old) <= keep && !denialTime(k).Before(cutoff) {
			return false, nil
		}
		old = append(old, bytes.Clone(k))
		return true, nil
	})
	if err != nil {
		return n, err
	}
	for _, k := range old {
		if err := tx.Delete(tableDenials, k); err != nil {
			return n, err
		}
	}
	return n - len(old), nil
}

// FlushDenials writes the queued denials to the database in one
// transaction and trims the record to gate.denials.keep and maxAge.
// RunDenials calls it periodically and Close once more. On failure the
// denials stay queued for the next call and
// gatehouse_denial_store_errors_total counts it; the pulls stay refused
// whatever happens here.
func (s *Store) FlushDenials(ctx context.Context) error {
	l := s.denials
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	batch := l.take()
	cutoff := s.denialCutoff()
	if len(batch) == 0 && !s.denialsOlderThan(ctx, cutoff) {
		return nil
	}
	stored := l.stored
	err := s.meta.Update(ctx, func(tx storage.Tx) error {
		n := l.stored
		for i := range batch {
			v, err := json.Marshal(&batch[i])
			if err != nil {
				return err
			}
			seq, err := tx.NextSequence(tableDenials)
			if err != nil {
				return err
			}
			if err := tx.Put(tableDenials, denialKey(batch[i].Time, seq), v); err != nil {
				return err
			}
			n++
		}
		var err error
		stored, err = trimDenials(tx, n, l.keep, cutoff)
		return err
	})
	if err != nil {
		metrics.DenialStoreErrors.Inc()
		l.requeue(batch)
		return fmt.Errorf("recording %d denials: %w", len(batch), err)
	}
	l.stored = stored
	return nil
}

// denialsOlderThan reports whether the oldest record is older than cutoff
// (never when cutoff is zero): an idle gatehouse still ages its record out.
func (s *Store) denialsOlderThan(ctx context.Context, cutoff time.Time) bool {
	if cutoff.IsZero() {
		return false
	}
	var old bool
	_ = s.meta.View(ctx, func(tx storage.Tx) error {
		return tx.Scan(tableDenials, nil, false, func(k, _ []byte) (bool, error) {
			old = denialTime(k).Before(cutoff)
			return false, nil
		})
	})
	return old
}

// RunDenials writes queued denials to the database every
// gate.denials.flushInterval, and at once when a batch is queued, until
// ctx ends; Close writes what is left. Without it denials are written
// only by Close (and FlushDenials), at most gate.denials.keep of them
// waiting.
func (s *Store) RunDenials(ctx context.Context) {
	t := time.NewTicker(s.flushIv)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-s.denials.kick:
		}
		// The flush is not cut short by the end of ctx: what is taken
		// from the queue is written or put back.
		if err := s.FlushDenials(context.WithoutCancel(ctx)); err != nil {
			s.log.Error("recording denials; they stay queued", "err", err)
		}
	}
}
