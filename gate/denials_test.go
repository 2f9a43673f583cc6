package gate

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate/records"
	"github.com/gatehouse/gatehouse/metrics"
	"github.com/gatehouse/gatehouse/storage"
)

// The denial log itself (batches, trimming, loading) is tested in
// gate/records; these tests are of the gate's refusals going into it.

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
func repos(ds []records.Denial) string {
	var rs []string
	for _, d := range ds {
		rs = append(rs, d.Repo)
	}
	return strings.Join(rs, ",")
}

// storedDenials counts the records in the database.
func storedDenials(t *testing.T, f *fixture) int {
	t.Helper()
	n := 0
	err := f.meta.View(context.Background(), func(tx storage.Tx) error {
		return tx.Scan("denials", nil, false, func(_, _ []byte) (bool, error) { n++; return true, nil })
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// flushDenials writes the queued denials and checks how many are stored.
func (f *fixture) flushDenials(t *testing.T, want int) {
	t.Helper()
	if err := f.g.records.FlushDenials(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := storedDenials(t, f); n != want {
		t.Fatalf("%d denials stored, want %d", n, want)
	}
}

func apiDenials(t *testing.T, f *fixture) []byte {
	t.Helper()
	srv := httptest.NewServer(f.api())
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
	before := apiDenials(t, f)
	var list struct{ Denials []records.Denial }
	if err := json.Unmarshal(before, &list); err != nil || len(list.Denials) != 2 || list.Denials[0].Tag != "v2" ||
		list.Denials[0].Client != "10.0.0.7:5123" || !strings.Contains(list.Denials[0].Message, "CVE-2026-1111") {
		t.Fatalf("before restart: %s %v", before, err)
	}
	if err := f.g.Close(); err != nil {
		t.Fatal(err)
	}
	f.open(t, parseConfig(t, policyYAML))
	if after := apiDenials(t, f); !bytes.Equal(before, after) {
		t.Fatalf("after restart:\n%s\nbefore:\n%s", after, before)
	}
	// New denials go on top of the loaded ones.
	f.denyN(1)
	if got := repos(f.g.Denials()); got != "r0,team/bad,team/bad" {
		t.Fatalf("denials after restart and one more: %s", got)
	}
}

// failingMeta is a MetaStore whose transactions fail while fail is set, as
// on a full or broken disk.
type failingMeta struct {
	storage.MetaStore
	fail atomic.Bool
}

var errDisk = errors.New("disk broken")

func (m *failingMeta) View(ctx context.Context, fn func(storage.Tx) error) error {
	if m.fail.Load() {
		return errDisk
	}
	return m.MetaStore.View(ctx, fn)
}

func (m *failingMeta) Update(ctx context.Context, fn func(storage.Tx) error) error {
	if m.fail.Load() {
		return errDisk
	}
	return m.MetaStore.Update(ctx, fn)
}

// A failed write neither admits the image nor fails the request; the
// denials stay queued, are counted, and are written by the next flush.
func TestDenialStoreErrorFailsClosed(t *testing.T) {
	f := newFixture(t, policyYAML)
	f.g.Close()
	disk := &failingMeta{}
	f.openOn(t, parseConfig(t, policyYAML), func(m storage.MetaStore) storage.MetaStore { disk.MetaStore = m; return disk })
	f.scanner.vulns["up.example/team/bad"] = []Vuln{critical}
	bad := f.image(t, "team/bad")
	if v, err := f.g.Check(context.Background(), bad); err != nil || v.Admitted {
		t.Fatalf("%+v %v", v, err)
	}
	disk.fail.Store(true) // every read and write now fails
	errs := metricValue(t, metrics.DenialStoreErrors, "")
	if v, err := f.g.Check(context.Background(), bad); err != nil || v.Admitted {
		t.Fatalf("with the denial store failing: %+v %v", v, err)
	}
	if err := f.g.records.FlushDenials(context.Background()); err == nil {
		t.Fatal("flush into a failing database succeeded")
	}
	if n := metricValue(t, metrics.DenialStoreErrors, "") - errs; n != 1 {
		t.Fatalf("denial store errors +%v, want +1", n)
	}
	if len(f.g.Denials()) != 2 {
		t.Fatalf("denials %+v", f.g.Denials())
	}
	disk.fail.Store(false)
	f.flushDenials(t, 2)
}

// BenchmarkDenyStorm is the refusal path under a denial storm, with
// RunDenials writing batches to disk behind it.
func BenchmarkDenyStorm(b *testing.B) {
	cfg, err := config.Parse([]byte(policyYAML))
	if err != nil {
		b.Fatal(err)
	}
	g, err := New(Options{Config: &cfg.Gate, Meta: openMeta(b, b.TempDir()), Scanner: &fakeScanner{}, Log: slog.New(slog.DiscardHandler)})
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
