package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"slices"
	"sync"
	"time"
)

// newBlobClient returns a client tuned for long bodies: big reads straight
// from the socket, no transparent decompression.
func newBlobClient() *http.Client {
	return &http.Client{Transport: &http.Transport{
		ReadBufferSize:      256 << 10,
		DisableCompression:  true,
		MaxIdleConnsPerHost: 64,
	}}
}

// discard is io.Discard without ReadFrom, so that io.CopyBuffer uses our
// large buffer instead of io.Discard's 8 KiB one.
type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

var copyBufs = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// fetch GETs url, reads the whole body and checks its length (and, when
// wantDigest is set, its sha256). It returns the time from sending the
// request to the end of the body.
func fetch(ctx context.Context, client *http.Client, url string, wantSize int64, wantDigest string) (time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s: %s", url, resp.Status, snippet(resp.Body))
	}
	var (
		w io.Writer = discard{}
		h hash.Hash
	)
	if wantDigest != "" {
		h = sha256.New()
		w = h
	}
	buf := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(buf)
	n, err := io.CopyBuffer(w, resp.Body, *buf)
	elapsed := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("GET %s: body broken after %d bytes: %w", url, n, err)
	}
	if n != wantSize {
		return 0, fmt.Errorf("GET %s: body is %d bytes, want %d", url, n, wantSize)
	}
	if h != nil {
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != wantDigest {
			return 0, fmt.Errorf("GET %s: body digest %s, want %s", url, got, wantDigest)
		}
	}
	return elapsed, nil
}

// loadResult is one run of the manifest load generator.
type loadResult struct {
	Requests int           // successful requests that ended in the measured interval
	Errors   int           // failed requests (transport error or unexpected status) that ended in it
	FirstErr string        // the first failure, for the report
	Elapsed  time.Duration // measured interval
	P50, P99 time.Duration // latency of the successful requests counted
}

// PerSecond is the rate of successful requests.
func (r loadResult) PerSecond() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

// load sends method requests for url from conc goroutines, each on its own
// keep-alive connection, for d, and counts the successes (2xx, full body
// read). A short warm-up before the measured interval opens the
// connections.
func load(ctx context.Context, method, url string, conc int, d time.Duration) (loadResult, error) {
	tr := &http.Transport{
		MaxIdleConns:        conc * 2,
		MaxIdleConnsPerHost: conc * 2,
		DisableCompression:  true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	res, err := measureLoad(ctx, conc, d, func(buf []byte) error {
		return oneRequest(ctx, client, method, url, buf)
	})
	if err == nil && res.Requests == 0 {
		err = fmt.Errorf("%s %s: no successful request (%d failed; first: %s)", method, url, res.Errors, res.FirstErr)
	}
	return res, err
}

// measureLoad runs do from conc goroutines without pause for a warm-up and
// then d, the measured interval, and counts the requests that ended in it,
// wherever they started: the count and the divisor (d) then cover the same
// time. (Counting only the requests that also started in it would leave
// out each goroutine's request in flight at either edge, while its time
// stays in the divisor: a rate low by up to two requests per goroutine.)
func measureLoad(ctx context.Context, conc int, d time.Duration, do func(buf []byte) error) (loadResult, error) {
	warmup := min(d/4, time.Second)
	start := time.Now()
	measureFrom, stopAt := start.Add(warmup), start.Add(warmup+d)

	type worker struct {
		ok, bad int
		first   string
		lat     []time.Duration
	}
	workers := make([]worker, conc)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func(w *worker) {
			defer wg.Done()
			buf := make([]byte, 32<<10)
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(stopAt) {
					return
				}
				err := do(buf)
				t1 := time.Now()
				if !t1.After(measureFrom) || t1.After(stopAt) {
					continue // ended in the warm-up or after the interval
				}
				if err != nil {
					if w.bad == 0 {
						w.first = err.Error()
					}
					w.bad++
					continue
				}
				w.ok++
				w.lat = append(w.lat, t1.Sub(t0))
			}
		}(&workers[i])
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return loadResult{}, err
	}
	res := loadResult{Elapsed: d}
	var lat []time.Duration
	for _, w := range workers {
		res.Requests += w.ok
		res.Errors += w.bad
		if res.FirstErr == "" {
			res.FirstErr = w.first
		}
		lat = append(lat, w.lat...)
	}
	if len(lat) > 0 {
		slices.Sort(lat)
		res.P50 = lat[len(lat)/2]
		res.P99 = lat[len(lat)*99/100]
	}
	return res, nil
}

func oneRequest(ctx context.Context, client *http.Client, method, url string, buf []byte) error {
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Accept", acceptManifests)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, snippet(resp.Body))
	}
	// Read the body to the end so that the connection is reused.
	for {
		_, err := resp.Body.Read(buf)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
