package e2e

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/gate/scan/scantest"
	"github.com/gatehouse/gatehouse/internal/testsvc"
)

// Replicas is a cluster of gatehouse replicas on one PostgreSQL and one
// S3 server (versitygw), both real and started for the test.
type Replicas struct {
	PG *testsvc.Server
	S3 *testsvc.S3Server
	GH []*Gatehouse
}

// StartReplicas starts n replicas sharing a new database and bucket, each
// with the config cfg (and, with cfg.DBArchive, the same DB imported). The
// third replica keeps a local disk tier in front of S3.
func StartReplicas(t *testing.T, n int, cfg GatehouseConfig) *Replicas {
	t.Helper()
	rs := &Replicas{PG: testsvc.PostgresServer(t), S3: testsvc.S3(t)}
	db := rs.PG.NewDatabase(t)
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	dsn, ak, sk := file("dsn", db.DSN), file("ak", rs.S3.AccessKey), file("sk", rs.S3.SecretKey)
	secret := file("secret", "e2e-cluster-secret-0123456789")
	for i := range n {
		peer := loopback(FreePort(t))
		c := cfg
		blobs := map[string]any{"type": "s3", "s3": map[string]any{
			"endpoint": rs.S3.Endpoint, "bucket": rs.S3.Bucket, "prefix": "e2e", "region": rs.S3.Region,
			"pathStyle": true, "accessKeyIdFile": ak, "secretAccessKeyFile": sk}}
		if i == 2 {
			blobs["localTier"] = map[string]any{"maxSize": "256MiB"}
		}
		c.Extra = map[string]any{
			"storage": map[string]any{
				"blobs":    blobs,
				"metadata": map[string]any{"type": "postgres", "postgres": map[string]any{"dsnFile": dsn}},
			},
			"cluster": map[string]any{"peerListen": peer, "advertise": "http://" + peer, "secretFile": secret, "leaseTTL": "2s"},
		}
		rs.GH = append(rs.GH, StartGatehouse(t, c))
	}
	return rs
}

// Sum adds a metric up over every replica still running.
func (rs *Replicas) Sum(t testing.TB, name string) float64 {
	var sum float64
	for _, g := range rs.GH {
		if g.proc.Killed() {
			continue
		}
		sum += g.Metric(t, name)
	}
	return sum
}

// pullAll pulls ref with each containerd at once (containerd i through
// replica i) and returns the results.
func pullAll(t *testing.T, ctrds []*Containerd, ref string) []CmdResult {
	res := make([]CmdResult, len(ctrds))
	var wg sync.WaitGroup
	for i, c := range ctrds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res[i] = c.Pull(t, ref, PullOptions{})
		}()
	}
	wg.Wait()
	return res
}

func TestReplicas(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	// Every upstream request is held a moment, so that the three replicas'
	// requests overlap; the tripwire counts them.
	tw := StartSlowTripwire(t, reg.URL, 200*time.Millisecond)
	// A slow link to the same registry, for the replica killed mid-blob.
	const slow = "slow.e2e.test"
	slowURL := startThrottle(t, reg.URL, 64<<10, 10*time.Millisecond)

	app := reg.PushImage(t, "e2e/app", "v1", ImageSpec{Seed: 1401, Layers: 4, LayerSize: 2 << 20, OCI: true,
		Platform: v1.Platform{OS: "linux", Architecture: "amd64"}})
	vuln := reg.Push(t, "e2e/vulnerable", "v1", scantest.VulnerableAlpine())
	rs := StartReplicas(t, 3, GatehouseConfig{
		Upstreams: []GatehouseUpstream{{Name: reg.Host, URL: tw.URL, TagTTL: "1h"}, {Name: slow, URL: slowURL, TagTTL: "1h"}},
		Gate: &GateConfig{DB: GateDB{UpdateInterval: "0s"}, MaxWait: "60s",
			Policy: GatePolicy{Rules: []GateRule{
				// The slow upstream's images are not scanned: a client's
				// layer request then meets the fetch in flight, not a
				// blob the scan already read whole.
				{Name: "slow-off", Mode: "off", Upstreams: []string{slow}},
				{Name: "cluster-rule", Mode: "enforce", Block: []string{"CRITICAL"}},
			}}},
		DBArchive: writeTestDB(t),
	})
	ctrds := make([]*Containerd, 3)
	for i := range ctrds {
		ctrds[i] = StartContainerd(t)
		ctrds[i].SetHosts(t, reg.Host, Hosts{Server: rs.GH[i].URL})
		ctrds[i].SetHosts(t, slow, Hosts{Server: rs.GH[i].URL})
	}

	t.Run("three containerds, three replicas, one fetch and one scan", func(t *testing.T) {
		want := reg.Content(t, app.Repo, app.Digest, nil)
		for i, r := range pullAll(t, ctrds, app.Ref(reg.Host)) {
			if r.Err != nil {
				t.Fatalf("containerd %d through replica %d: %v", i, i, r)
			}
			ctrds[i].AssertContent(t, want)
		}
		blobs := 0
		for d, o := range want {
			if strings.HasPrefix(o.Kind, "manifest") || o.Kind == "index" {
				continue
			}
			blobs++
			if n := tw.Count(http.MethodGet, "/blobs/"+d); n != 1 {
				t.Errorf("%s %s: %d upstream GETs for three replicas, want 1", o.Kind, d, n)
			}
		}
		if blobs < 5 {
			t.Fatalf("only %d blobs checked", blobs)
		}
		if n := rs.Sum(t, "gatehouse_scan_duration_seconds_count"); n != 1 {
			t.Errorf("%v scans of one image across the cluster, want 1", n)
		}
		if n := rs.Sum(t, "gatehouse_blob_fetches_from_peers_total"); n == 0 {
			t.Error("no replica streamed a blob from the fetching one")
		}
	})

	t.Run("a vulnerable image is refused by every replica with the same reason", func(t *testing.T) {
		before := rs.Sum(t, "gatehouse_scan_duration_seconds_count")
		bodies := make([]string, 3)
		var wg sync.WaitGroup
		for i, g := range rs.GH {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := g.Do(t, http.MethodGet, "/v2/"+vuln.Repo+"/manifests/"+vuln.Tag+"?ns="+reg.Host)
				if r.Status != http.StatusForbidden {
					t.Errorf("replica %d: %s", i, r)
				}
				bodies[i] = string(r.Body)
			}()
		}
		wg.Wait()
		if !strings.Contains(bodies[0], scantest.CVEAlpineOpenSSL) || bodies[1] != bodies[0] || bodies[2] != bodies[0] {
			t.Errorf("the replicas' refusals differ or miss the CVE:\n%s", strings.Join(bodies, "\n"))
		}
		if n := rs.Sum(t, "gatehouse_scan_duration_seconds_count") - before; n != 1 {
			t.Errorf("%v scans of the vulnerable image across the cluster, want 1", n)
		}
		// Every replica's API shows the cluster's denials, once they are
		// written to the database (every gate.denials.flushInterval).
		for i, g := range rs.GH {
			waitFor(t, 30*time.Second, fmt.Sprintf("replica %d showing a denial", i), func() bool {
				var d struct{ Denials []struct{ Repo string } }
				g.API(t, "/api/v1/denials", &d)
				return len(d.Denials) > 0
			})
		}
	})

	t.Run("the fetching replica is killed mid-blob", func(t *testing.T) {
		img := reg.PushImage(t, "e2e/big", "v1", ImageSpec{Seed: 1402, Layers: 1, LayerSize: 16 << 20, OCI: true,
			Platform: v1.Platform{OS: "linux", Architecture: "amd64"}})
		ref := slow + "/" + img.Repo + ":" + img.Tag
		// The config, then the layer: once its second fetch started,
		// replica 0 is fetching the layer (for about 2.5 s on this link).
		fetches := rs.GH[0].Metric(t, "gatehouse_blob_fetches_total")
		peered := rs.GH[1].Metric(t, "gatehouse_blob_fetches_from_peers_total")
		first := make(chan CmdResult, 1)
		go func() { first <- ctrds[0].Pull(t, ref, PullOptions{}) }()
		waitFor(t, 30*time.Second, "replica 0 fetching the big layer", func() bool {
			return rs.GH[0].Metric(t, "gatehouse_blob_fetches_total") >= fetches+2
		})
		second := make(chan CmdResult, 1)
		go func() { second <- ctrds[1].Pull(t, ref, PullOptions{}) }()
		waitFor(t, 30*time.Second, "replica 1 streaming from replica 0", func() bool {
			return rs.GH[1].Metric(t, "gatehouse_blob_fetches_from_peers_total") > peered
		})
		rs.GH[0].Kill(t)
		<-first
		want := reg.Content(t, img.Repo, img.Digest, nil)
		if r := <-second; r.Err == nil {
			ctrds[1].AssertContent(t, want) // the right bytes, or a failure
		} else {
			t.Logf("the pull through replica 1 failed with its peer: %s", r.LastLine())
		}
		// Another replica takes the fetch over once the dead one's lease
		// lapsed (leaseTTL 2s).
		var last CmdResult
		waitFor(t, 60*time.Second, "a pull through replica 1 after the kill", func() bool {
			last = ctrds[1].Pull(t, ref, PullOptions{})
			return last.Err == nil
		})
		ctrds[1].AssertContent(t, want)
		if r := rs.GH[1].Run(t, "cache verify"); r.Err != nil {
			t.Errorf("cache verify on the shared store after the kill: %v", r)
		}
		rs.GH[0].Start(t) // back for the next subtests
	})

	t.Run("PostgreSQL restarts", func(t *testing.T) {
		img := reg.PushImage(t, "e2e/pg", "v1", SmallImage(1403))
		rs.PG.Stop(t)
		g := rs.GH[2]
		waitFor(t, 20*time.Second, "/readyz failing without PostgreSQL", func() bool {
			return g.Do(t, http.MethodGet, "/readyz").Status == http.StatusServiceUnavailable
		})
		r := g.Do(t, http.MethodGet, "/v2/"+img.Repo+"/manifests/"+img.Tag+"?ns="+reg.Host)
		if r.Status == http.StatusOK || len(r.OCIErrors()) == 0 {
			t.Errorf("a manifest nobody judged, without PostgreSQL: %s", r)
		}
		rs.PG.Start(t)
		waitFor(t, 30*time.Second, "/readyz after PostgreSQL is back", func() bool {
			return g.Do(t, http.MethodGet, "/readyz").Status == http.StatusOK
		})
		if res := ctrds[2].Pull(t, img.Ref(reg.Host), PullOptions{}); res.Err != nil {
			t.Fatalf("pull after PostgreSQL came back: %v", res)
		}
		ctrds[2].AssertContent(t, reg.Content(t, img.Repo, img.Digest, nil))
	})

	t.Run("S3 is down for a while", func(t *testing.T) {
		img := reg.PushImage(t, "e2e/s3", "v1", SmallImage(1404))
		rs.S3.Stop(t)
		g := rs.GH[1]
		waitFor(t, 20*time.Second, "/readyz failing without S3", func() bool {
			return g.Do(t, http.MethodGet, "/readyz").Status == http.StatusServiceUnavailable
		})
		// A blob already cached cannot be read: a clear error, not a 404.
		var layer string
		for d, o := range reg.Content(t, app.Repo, app.Digest, nil) {
			if strings.HasPrefix(o.Kind, "layer") {
				layer = d
			}
		}
		if r := g.Do(t, http.MethodGet, "/v2/"+app.Repo+"/blobs/"+layer+"?ns="+reg.Host); r.Status != http.StatusServiceUnavailable {
			t.Errorf("a cached blob with S3 down: %s", r)
		}
		rs.S3.Start(t)
		waitFor(t, 30*time.Second, "/readyz after S3 is back", func() bool {
			return g.Do(t, http.MethodGet, "/readyz").Status == http.StatusOK
		})
		if res := ctrds[1].Pull(t, img.Ref(reg.Host), PullOptions{}); res.Err != nil {
			t.Fatalf("pull after S3 came back: %v", res)
		}
		ctrds[1].AssertContent(t, reg.Content(t, img.Repo, img.Digest, nil))
		r := g.Run(t, "cache verify")
		if r.Err != nil {
			t.Fatalf("cache verify: %v", r)
		}
		if ls := g.Run(t, "cache ls"); !strings.Contains(ls.Output(), layer) {
			t.Errorf("cache ls of the shared store does not list %s:\n%s", layer, ls.Output())
		}
	})
}

// Replicas judge with one vulnerability DB: one of them finds a new DB
// upstream and publishes it, every one imports that artifact, and the
// cluster moves from V1 to V2 together.
func TestReplicasShareTheDB(t *testing.T) {
	requireGatehouse(t)
	reg := StartRegistry(t, RegistryOptions{})
	tw := StartTripwire(t, reg.URL)
	v1DB, v2DB := scantest.V1(), scantest.V2()
	art1 := pushDBArtifact(t, reg, dbRepo, dbTag, v1DB)
	clean := reg.Push(t, "e2e/clean", "v1", scantest.CleanAlpine())
	rs := StartReplicas(t, 2, GatehouseConfig{
		Upstreams: []GatehouseUpstream{{Name: tw.Host, URL: tw.URL, TagTTL: "1h"}},
		Gate: &GateConfig{MaxWait: "60s",
			DB:     GateDB{Repository: tw.Host + "/" + dbRepo + ":" + dbTag, UpdateInterval: "2s"},
			Policy: GatePolicy{Rules: []GateRule{{Name: "cluster-rule", Mode: "enforce", Block: []string{"CRITICAL"}}}}},
	})
	onDB := func(db scantest.DB) func() bool {
		return func() bool {
			for _, g := range rs.GH {
				var policy struct {
					DBVersion string `json:"dbVersion"`
				}
				g.API(t, "/api/v1/policy", &policy)
				if !strings.HasSuffix(policy.DBVersion, dbVersionOf(db)) {
					return false
				}
				if st := g.Run(t, "db status"); !strings.Contains(st.Output(), db.UpdatedAt.Format(time.RFC3339)) {
					return false // published, not imported here yet
				}
			}
			return true
		}
	}
	waitFor(t, 90*time.Second, "every replica on the V1 DB", onDB(v1DB))
	t.Logf("V1 artifact manifest GETs: %d by tag, %d by digest (adoptions)",
		tw.Count(http.MethodGet, "/manifests/"+dbTag), tw.Count(http.MethodGet, "/manifests/"+art1.String()))
	pushDBArtifact(t, reg, dbRepo, dbTag, v2DB)
	waitFor(t, 90*time.Second, "every replica on the V2 DB", onDB(v2DB))

	// Judged once for the cluster, with V2 (which knows a CRITICAL CVE of
	// this image's musl that V1 did not): the same refusal everywhere.
	path := "/v2/" + clean.Repo + "/manifests/" + clean.Tag + "?ns=" + tw.Host
	var first string
	for i, g := range rs.GH {
		r := g.Do(t, http.MethodGet, path)
		if r.Status != http.StatusForbidden || !strings.Contains(string(r.Body), "CVE-2099-9001") {
			t.Fatalf("replica %d under V2: %s", i, r)
		}
		if i == 0 {
			first = string(r.Body)
		} else if string(r.Body) != first {
			t.Errorf("replicas refuse differently:\n%s\n%s", first, r.Body)
		}
	}
	if n := rs.Sum(t, "gatehouse_scan_duration_seconds_count"); n != 1 {
		t.Errorf("%v scans of one image by the cluster, want 1", n)
	}
}
