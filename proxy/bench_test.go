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
