package records

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/storage"
	"github.com/gatehouse/gatehouse/storage/boltmeta"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// countingMeta counts the write transactions of a MetaStore.
type countingMeta struct {
	storage.MetaStore
	updates atomic.Int64
}

func (m *countingMeta) Update(ctx context.Context, fn func(storage.Tx) error) error {
	m.updates.Add(1)
	return m.MetaStore.Update(ctx, fn)
}

// fixture is a records store on a bbolt file kept across restarts.
type fixture struct {
	dir  string
	now  time.Time
	log  *slog.Logger // default: discard
	meta *countingMeta
	s    *Store
}

func newFixture(t *testing.T, yml string) *fixture {
	f := &fixture{dir: t.TempDir(), now: time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)}
	f.open(t, yml)
	return f
}

// open opens the database and the store on it, as gatehouse does when it
// starts (again); a store opened before must have been closed.
func (f *fixture) open(t *testing.T, yml string) {
	t.Helper()
	cfg, err := config.Parse([]byte(yml))
	if err != nil {
		t.Fatal(err)
	}
	if f.meta != nil {
		f.meta.Close()
	}
	meta, err := boltmeta.Open(filepath.Join(f.dir, "gate.db"), 0)
	if err != nil {
		t.Fatal(err)
	}
	f.meta = &countingMeta{MetaStore: meta}
	t.Cleanup(func() { meta.Close() })
	log := f.log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s, err := Open(context.Background(), f.meta, Options{Denials: cfg.Gate.Denials, Log: log, Now: func() time.Time { return f.now }})
	if err != nil {
		t.Fatal(err)
	}
	f.s = s
	t.Cleanup(func() { s.Close() })
}

// denyN records n refused pulls of repos r0, r1, ..., a second apart.
func (f *fixture) denyN(n int) {
	for i := range n {
		f.now = f.now.Add(time.Second)
		f.s.AddDenial(Denial{Time: f.now, Upstream: "up.example", Repo: fmt.Sprintf("r%d", i), Digest: "sha256:" + strings.Repeat("a", 64),
			Rule: "strict", Message: fmt.Sprintf("denied %d", i)})
	}
}

// repos lists the repositories of the denials, newest first.
func repos(ds []Denial) string {
	var rs []string
	for _, d := range ds {
		rs = append(rs, d.Repo)
	}
	return strings.Join(rs, ",")
}

// stored counts the records in the denials table.
func (f *fixture) stored(t *testing.T) int {
	t.Helper()
	n := 0
	err := f.meta.View(context.Background(), func(tx storage.Tx) error {
		return tx.Scan(tableDenials, nil, false, func(_, _ []byte) (bool, error) { n++; return true, nil })
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// flush writes the queued denials and checks how many are stored.
func (f *fixture) flush(t *testing.T, want int) {
	t.Helper()
	if err := f.s.FlushDenials(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := f.stored(t); n != want {
		t.Fatalf("%d denials stored, want %d", n, want)
	}
}

const noConfig = ""

// Only gate.denials.keep are kept, in memory and on disk; a smaller keep
// at the next start trims the record.
func TestDenialsTrimmedToKeep(t *testing.T) {
	f := newFixture(t, "gate: {denials: {keep: 5}}")
	f.denyN(3)
	f.flush(t, 3)
	f.denyN(9)
	if got := repos(f.s.Denials()); got != "r8,r7,r6,r5,r4" {
		t.Fatalf("in memory: %s", got)
	}
	f.flush(t, 5)
	f.s.Close()
	f.open(t, "gate: {denials: {keep: 3}}")
	if got := repos(f.s.Denials()); got != "r8,r7,r6" {
		t.Fatalf("after restart with keep 3: %s", got)
	}
	if n := f.stored(t); n != 3 {
		t.Fatalf("%d stored after restart with keep 3, want 3", n)
	}
	f.s.Close()
	f.open(t, noConfig)
	if got := repos(f.s.Denials()); got != "r8,r7,r6" {
		t.Fatalf("after restart with the default keep: %s", got)
	}
}

// gate.denials.maxAge hides older denials at once and deletes them at the
// next flush, even when no denial is queued.
func TestDenialsMaxAge(t *testing.T) {
	f := newFixture(t, "gate: {denials: {maxAge: 1h}}")
	f.denyN(2)
	f.now = f.now.Add(50 * time.Minute)
	f.denyN(1)
	f.flush(t, 3)
	f.now = f.now.Add(15 * time.Minute) // the first two are now over an hour old
	if got := repos(f.s.Denials()); got != "r0" {
		t.Fatalf("denials %s, want only the one younger than an hour", got)
	}
	f.flush(t, 1)
	f.s.Close()
	f.now = f.now.Add(time.Hour)
	f.open(t, "gate: {denials: {maxAge: 1h}}")
	if got, n := f.s.Denials(), f.stored(t); len(got) != 0 || n != 0 {
		t.Fatalf("after restart two hours later: %d shown, %d stored", len(got), n)
	}
}

// Denials are written in batches: nothing per denial on the refusal path,
// everything queued in one transaction, and what is still queued at Close.
func TestDenialsBatchedAndFlushedOnClose(t *testing.T) {
	f := newFixture(t, noConfig)
	before := f.meta.updates.Load()
	f.denyN(250)
	if n := f.stored(t); n != 0 || f.meta.updates.Load() != before {
		t.Fatalf("%d written on the refusal path (%d transactions), want 0", n, f.meta.updates.Load()-before)
	}
	f.flush(t, 250)
	if w := f.meta.updates.Load() - before; w != 1 {
		t.Fatalf("%d write transactions for 250 denials, want 1", w)
	}
	f.denyN(2) // r0, r1 again, never flushed
	f.s.Close()
	f.open(t, noConfig)
	ds := f.s.Denials()
	if len(ds) != 252 || ds[0].Repo != "r1" || ds[1].Repo != "r0" || ds[2].Repo != "r249" || ds[251].Repo != "r0" {
		t.Fatalf("after Close and restart: %d denials, newest %s", len(ds), repos(ds[:min(3, len(ds))]))
	}
	for i := 1; i < len(ds); i++ {
		if ds[i].Time.After(ds[i-1].Time) {
			t.Fatalf("not newest first at %d: %v after %v", i, ds[i].Time, ds[i-1].Time)
		}
	}
}

// RunDenials writes a full batch at once, without waiting for its ticker,
// and stops with its context.
func TestRunDenialsWritesFullBatch(t *testing.T) {
	f := newFixture(t, "gate: {denials: {flushInterval: 1m}}")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.s.RunDenials(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	f.denyN(DenialBatch - 1)
	f.denyN(1)
	deadline := time.Now().Add(30 * time.Second)
	for f.stored(t) < DenialBatch {
		if time.Now().After(deadline) {
			t.Fatalf("%d of a full batch written after 30s; the ticker is a minute", f.stored(t))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A record that does not decode is skipped with a log line at start-up;
// the others load.
func TestUndecodableDenialSkipped(t *testing.T) {
	f := newFixture(t, noConfig)
	f.denyN(2)
	f.s.Close()
	err := f.meta.Update(context.Background(), func(tx storage.Tx) error {
		if err := tx.Put(tableDenials, denialKey(f.now.Add(time.Hour), 1<<40), []byte("{not json")); err != nil {
			return err
		}
		return tx.Put(tableDenials, []byte("short key"), []byte(`{"repository":"odd"}`))
	})
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	f.log = slog.New(slog.NewTextHandler(&logs, nil))
	f.open(t, noConfig)
	if got := repos(f.s.Denials()); got != "r1,r0" {
		t.Fatalf("denials %q", got)
	}
	if n := strings.Count(logs.String(), "skipping a denial record that does not decode"); n != 2 {
		t.Fatalf("%d log lines for the two broken records: %s", n, logs.String())
	}
}
