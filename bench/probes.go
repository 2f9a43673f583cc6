package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"syscall"
	"time"
)

// resolve does what a client does before it pulls a layer, untimed:
// resolve the tag (HEAD), then GET the manifest by digest. A cold blob GET
// thus meets a proxy that has already talked to the upstream about this
// repository, as it does in a real pull.
func (b *bench) resolve(ctx context.Context, base string) error {
	client := &http.Client{Transport: &http.Transport{}, Timeout: time.Minute}
	defer client.CloseIdleConnections()
	buf := make([]byte, 32<<10)
	if err := oneRequest(ctx, client, http.MethodHead, base+b.img.manifestPath(b.img.tag), buf); err != nil {
		return err
	}
	return oneRequest(ctx, client, http.MethodGet, base+b.img.manifestPath(b.img.digest), buf)
}

// settleDisk writes all dirty pages back (sync(2)) before a timed cold
// transfer. The benchmark itself dirties gigabytes (the layer file, the
// upstream's copy, every proxy's copy); left pending, they make the kernel
// throttle the next writer to the disk's writeback speed, which would
// charge this run's history to whichever proxy writes next.
func settleDisk() { syscall.Sync() }

// settleCold prepares the machine for a timed cold transfer of the blob:
// settleDisk, then the blob's size and a quarter more written to a
// scratch file that is removed at once, so that the transfer starts with
// that much memory freed a moment before. On a virtual machine whose
// balloon hands memory left free for a few seconds back to the host
// (virtio free page reporting), the page cache's next write into such
// memory costs many times the CPU: here 1 GiB written into memory freed
// at once took 0.2 s of system time, into memory freed 3 s or more
// earlier 1.5-1.8 s, into memory the machine had never used 8-9 s.
// Without this, each cold figure would depend on how long ago the
// previous target freed its copy of the blob.
func (b *bench) settleCold() error {
	settleDisk()
	path := filepath.Join(b.root, "recycle")
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer os.Remove(path)
	defer f.Close()
	if err := writeZeros(f, b.img.layer.Size+b.img.layer.Size/4, make([]byte, 1<<20)); err != nil {
		return fmt.Errorf("recycling memory: %w", err)
	}
	return f.Close()
}

// writeZeros writes size zero bytes to w, len(buf) at a time.
func writeZeros(w io.Writer, size int64, buf []byte) error {
	for left := size; left > 0; left -= int64(len(buf)) {
		if _, err := w.Write(buf[:min(left, int64(len(buf)))]); err != nil {
			return err
		}
	}
	return nil
}

// writeProbe times writing the blob's size of zeros to a new file in 256
// KiB writes (no fsync), and removes the file. It returns the wall time
// and the CPU time the writes took (waiting for the disk is not CPU).
func (b *bench) writeProbe() (time.Duration, time.Duration, error) {
	path := filepath.Join(b.root, "write-probe")
	f, err := os.Create(path)
	if err != nil {
		return 0, 0, err
	}
	defer os.Remove(path)
	defer f.Close()
	buf := make([]byte, 256<<10)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start, cpu0 := time.Now(), threadCPU()
	if err := writeZeros(f, b.img.layer.Size, buf); err != nil {
		return 0, 0, err
	}
	return time.Since(start), threadCPU() - cpu0, f.Close()
}

// hashProbe returns the CPU time sha256 takes over size bytes, fed from a
// 256 KiB buffer as a proxy feeds it from the network.
func hashProbe(size int64) time.Duration {
	buf := make([]byte, 256<<10)
	rand.Read(buf)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	h := sha256.New()
	cpu0 := threadCPU()
	for left := size; left > 0; left -= int64(len(buf)) {
		h.Write(buf[:min(left, int64(len(buf)))])
	}
	h.Sum(nil)
	return threadCPU() - cpu0
}

// threadCPU is the user and system CPU time of the calling thread.
func threadCPU() time.Duration { return rusage(rusageThread) }

// processCPU is the user and system CPU time of this process.
func processCPU() time.Duration { return rusage(syscall.RUSAGE_SELF) }

const rusageThread = 1 // RUSAGE_THREAD (Linux)

func rusage(who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
