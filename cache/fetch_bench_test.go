package cache

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// BenchmarkColdFetch measures the cold path of one client: the blob comes
// from a loopback socket, goes through the store (written, hashed,
// verified) and out to another loopback socket, as a cold pull does. Its
// CPU profile (-cpuprofile) shows what gatehouse spends per byte.
func BenchmarkColdFetch(b *testing.B) {
	const size = 256 << 20
	data := make([]byte, size)
	rand.Read(data)
	sum := sha256.Sum256(data)
	dgst := v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}
	dir := b.TempDir()

	// Upstream: a listener that writes the blob to every connection.
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer up.Close()
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			go func() { c.Write(data); c.Close() }()
		}
	}()
	src := func(ctx context.Context, off int64) (io.ReadCloser, int64, int64, error) {
		c, err := net.Dial("tcp", up.Addr().String())
		return c, 0, size, err
	}
	// Client: a listener that discards what it reads.
	sink, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	got := make(chan int64)
	go func() {
		for {
			c, err := sink.Accept()
			if err != nil {
				return
			}
			go func() { n, _ := io.Copy(io.Discard, c); c.Close(); got <- n }()
		}
	}()

	b.SetBytes(size)
	b.ResetTimer()
	for i := range b.N {
		s, err := openDir(filepath.Join(dir, strconv.Itoa(i)), Options{Log: slog.New(slog.DiscardHandler)})
		if err != nil {
			b.Fatal(err)
		}
		st, err := s.Fetch(context.Background(), dgst, "up", src)
		if err != nil {
			b.Fatal(err)
		}
		if err := st.Wait(context.Background()); err != nil {
			b.Fatal(err)
		}
		out, err := net.Dial("tcp", sink.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		if n, err := st.Send(context.Background(), out, 0, size, nil); err != nil || n != size {
			b.Fatalf("sent %d bytes: %v", n, err)
		}
		out.Close()
		if n := <-got; n != size {
			b.Fatalf("client got %d bytes", n)
		}
		st.Close()
		s.Close()
	}
}
