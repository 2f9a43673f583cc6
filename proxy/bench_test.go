package proxy_test

import (
	"io"
	"net/http"
	"os"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// BenchmarkColdBlob pulls a blob gatehouse has not cached, through a fresh
// store each time: upstream → gatehouse (write, hash, verify) → client. Its
// CPU profile (-cpuprofile) shows gatehouse's cost per byte of a cold pull.
func BenchmarkColdBlob(b *testing.B) {
	var dgst v1.Hash
	e := newEnv(b, nil)
	img := e.push("bench/cold", "v1", 1, 256<<20)
	layer := must(img.Layers())[0]
	dgst = must(layer.Digest())
	size := must(layer.Size())
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		e.stop()
		if err := os.RemoveAll(e.dataDir); err != nil {
			b.Fatal(err)
		}
		e.start()
		b.StartTimer()
		resp, err := http.Get(e.gh.URL + "/v2/bench/cold/blobs/" + dgst.String())
		if err != nil {
			b.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != size {
			b.Fatalf("read %d: %v", n, err)
		}
	}
}

// BenchmarkWarmManifestByTag serves a cached manifest by tag (fresh
// mapping) over HTTP: the per-request cost of routing, the tag lookup and
// the manifest read, without the gate.
func BenchmarkWarmManifestByTag(b *testing.B) {
	e := newEnv(b, nil)
	e.push("bench/tag", "v1", 1, 1000)
	url := e.gh.URL + "/v2/bench/tag/manifests/v1"
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json")
	get := func() {
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	get()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		get()
	}
}
