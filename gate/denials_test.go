package gate

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/metrics"
)

func parseConfig(t *testing.T, yml string) *config.Config {
	t.Helper()
	cfg, err := config.Parse([]byte(yml))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// denyN records n refused pulls of repos r0, r1, ..., a second apart.
func (f *fixture) denyN(n int) {
	for i := range n {
		f.now = f.now.Add(time.Second)
		f.g.deny(&Verdict{Rule: "strict", Message: fmt.Sprintf("denied %d", i)},
			&Subject{Upstream: "up.example", Repo: fmt.Sprintf("r%d", i), Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("a", 64)}})
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

// storedDenials counts the records in the database.
func storedDenials(t *testing.T, g *Gate) int {
	t.Helper()
	n := 0
	if err := g.db.View(func(tx *bolt.Tx) error { n = tx.Bucket(bucketDenials).Stats().KeyN; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// flushDenials writes the queued denials and checks how many are stored.
func (f *fixture) flushDenials(t *testing.T, want int) {
	t.Helper()
	if err := f.g.FlushDenials(); err != nil {
		t.Fatal(err)
	}
	if n := storedDenials(t, f.g); n != want {
		t.Fatalf("%d denials stored, want %d", n, want)
	}
}

func apiDenials(t *testing.T, g *Gate) []byte {
	t.Helper()
	srv := httptest.NewServer(g.APIHandler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/api/v1/denials")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET /api/v1/denials: %d %s %v", resp.StatusCode, b, err)
	}
	return b
}

// A refused pull is still on record, unchanged, after gatehouse restarts:
// the API answers byte for byte as before.
func TestDenialsSurviveRestart(t *testing.T) {
	f := newFixture(t, policyYAML)
	f.scanner.vulns["up.example/team/bad"] = []Vuln{critical}
	bad := f.image(t, "team/bad")
	bad.Client = "10.0.0.7:5123"
	for _, tag := range []string{"v1", "v2"} {
		f.now = f.now.Add(time.Minute)
		bad.Tag = tag
		if v, err := f.g.Check(context.Background(), bad); err != nil || v.Admitted {
			t.Fatalf("%+v %v", v, err)
		}
	}
	before := apiDenials(t, f.g)
	var list struct{ Denials []Denial }
	if err := json.Unmarshal(before, &list); err != nil || len(list.Denials) != 2 || list.Denials[0].Tag != "v2" ||
		list.Denials[0].Client != "10.0.0.7:5123" || !strings.Contains(list.Denials[0].Message, "CVE-2026-1111") {
		t.Fatalf("before restart: %s %v", before, err)
	}
	if err := f.g.Close(); err != nil {
		t.Fatal(err)
	}
	f.open(t, parseConfig(t, policyYAML))
	if after := apiDenials(t, f.g); !bytes.Equal(before, after) {
		t.Fatalf("after restart:\n%s\nbefore:\n%s", after, before)
	}
	// New denials go on top of the loaded ones.
	f.denyN(1)
	if got := repos(f.g.Denials()); got != "r0,team/bad,team/bad" {
		t.Fatalf("denials after restart and one more: %s", got)
	}
}

// Only gate.denials.keep are kept, in memory and on disk; a smaller keep
// at the next start trims the record.
func TestDenialsTrimmedToKeep(t *testing.T) {
	f := newFixture(t, policyYAML+"  denials: {keep: 5}\n")
	f.denyN(3)
	f.flushDenials(t, 3)
	f.denyN(9)
	if got := repos(f.g.Denials()); got != "r8,r7,r6,r5,r4" {
		t.Fatalf("in memory: %s", got)
	}
	f.flushDenials(t, 5)
	f.g.Close()
	f.open(t, parseConfig(t, policyYAML+"  denials: {keep: 3}\n"))
	if got := repos(f.g.Denials()); got != "r8,r7,r6" {
		t.Fatalf("after restart with keep 3: %s", got)
	}
	if n := storedDenials(t, f.g); n != 3 {
		t.Fatalf("%d stored after restart with keep 3, want 3", n)
	}
	f.g.Close()
	f.open(t, parseConfig(t, policyYAML))
	if got := repos(f.g.Denials()); got != "r8,r7,r6" {
		t.Fatalf("after restart with the default keep: %s", got)
	}
}

// gate.denials.maxAge hides older denials at once and deletes them at the
// next flush, even when no denial is queued.
func TestDenialsMaxAge(t *testing.T) {
	f := newFixture(t, policyYAML+"  denials: {maxAge: 1h}\n")
	f.denyN(2)
	f.now = f.now.Add(50 * time.Minute)
	f.denyN(1)
	f.flushDenials(t, 3)
	f.now = f.now.Add(15 * time.Minute) // the first two are now over an hour old
	if got := repos(f.g.Denials()); got != "r0" {
		t.Fatalf("denials %s, want only the one younger than an hour", got)
	}
	f.flushDenials(t, 1)
	f.g.Close()
	f.now = f.now.Add(time.Hour)
	f.open(t, parseConfig(t, policyYAML+"  denials: {maxAge: 1h}\n"))
	if got, n := f.g.Denials(), storedDenials(t, f.g); len(got) != 0 || n != 0 {
		t.Fatalf("after restart two hours later: %d shown, %d stored", len(got), n)
	}
}

// Denials are written in batches: nothing per denial on the refusal path,
// everything queued in one transaction, and what is still queued at Close.
func TestDenialsBatchedAndFlushedOnClose(t *testing.T) {
	f := newFixture(t, policyYAML)
	f.denyN(250)
	if n := storedDenials(t, f.g); n != 0 {
		t.Fatalf("%d written on the refusal path, want 0", n)
	}
	writes := func() int64 { s := f.g.db.Stats(); return s.TxStats.GetWrite() }
	before := writes()
	f.flushDenials(t, 250)
	// One transaction writes its dirty pages and the meta page: far fewer
	// writes than denials.
	if w := writes() - before; w >= 50 {
		t.Fatalf("%d page writes for 250 denials", w)
	}
	f.denyN(2) // r0, r1 again, never flushed
	f.g.Close()
	f.open(t, parseConfig(t, policyYAML))
	ds := f.g.Denials()
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
	f := newFixture(t, policyYAML+"  denials: {flushInterval: 1m}\n")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.g.RunDenials(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	f.denyN(denialBatch - 1)
	f.denyN(1)
	deadline := time.Now().Add(30 * time.Second)
	for storedDenials(t, f.g) < denialBatch {
		if time.Now().After(deadline) {
			t.Fatalf("%d of a full batch written after 30s; the ticker is a minute", storedDenials(t, f.g))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A record that does not decode is skipped with a log line at start-up;
// the others load.
func TestUndecodableDenialSkipped(t *testing.T) {
	f := newFixture(t, policyYAML)
	f.denyN(2)
	f.g.Close()
	db, err := bolt.Open(filepath.Join(f.dir, "gate.db"), 0o640, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDenials)
		if err := b.Put(denialKey(f.now.Add(time.Hour), 1<<40), []byte("{not json")); err != nil {
			return err
		}
		return b.Put([]byte("short key"), []byte(`{"repository":"odd"}`))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	f.log = slog.New(slog.NewTextHandler(&logs, nil))
	f.open(t, parseConfig(t, policyYAML))
	if got := repos(f.g.Denials()); got != "r1,r0" {
		t.Fatalf("denials %q", got)
	}
	if n := strings.Count(logs.String(), "skipping a denial record that does not decode"); n != 2 {
		t.Fatalf("%d log lines for the two broken records: %s", n, logs.String())
	}
}

// A failed write neither admits the image nor fails the request; the
// denials stay queued, are counted, and are written by the next flush.
func TestDenialStoreErrorFailsClosed(t *testing.T) {
	f := newFixture(t, policyYAML)
	f.scanner.vulns["up.example/team/bad"] = []Vuln{critical}
	bad := f.image(t, "team/bad")
	if v, err := f.g.Check(context.Background(), bad); err != nil || v.Admitted {
		t.Fatalf("%+v %v", v, err)
	}
	path := filepath.Join(f.dir, "gate.db")
	if err := f.g.db.Close(); err != nil { // every write now fails
		t.Fatal(err)
	}
	errs := metricValue(t, metrics.DenialStoreErrors, "")
	if v, err := f.g.Check(context.Background(), bad); err != nil || v.Admitted {
		t.Fatalf("with the denial store failing: %+v %v", v, err)
	}
	if err := f.g.FlushDenials(); err == nil {
		t.Fatal("flush into a closed database succeeded")
	}
	if n := metricValue(t, metrics.DenialStoreErrors, "") - errs; n != 1 {
		t.Fatalf("denial store errors +%v, want +1", n)
	}
	if len(f.g.Denials()) != 2 {
		t.Fatalf("denials %+v", f.g.Denials())
	}
	db, err := bolt.Open(path, 0o640, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.g.db = db
	f.flushDenials(t, 2)
}

// BenchmarkDenyStorm is the refusal path under a denial storm, with
// RunDenials writing batches to disk behind it.
func BenchmarkDenyStorm(b *testing.B) {
	cfg, err := config.Parse([]byte(policyYAML))
	if err != nil {
		b.Fatal(err)
	}
	g, err := New(Options{Config: &cfg.Gate, DataDir: b.TempDir(), Scanner: &fakeScanner{}, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { g.RunDenials(ctx); close(done) }()
	v := &Verdict{Rule: "strict", Message: "denied by rule \"strict\": 1 CRITICAL"}
	s := &Subject{Upstream: "up.example", Repo: "team/app", Tag: "v1", Client: "10.0.0.7:5123",
		Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("a", 64)}}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			g.deny(v, s)
		}
	})
	b.StopTimer()
	cancel()
	<-done
	if err := g.Close(); err != nil {
		b.Fatal(err)
	}
}
