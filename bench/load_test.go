package main

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

// The manifest rate is the requests counted over the time they were
// counted in. With fake time, two connections each answering in exactly
// 40 ms serve 2 / 40 ms = 50 requests a second; the measured interval
// (1 s after a 250 ms warm-up) is not a whole number of requests after the
// warm-up ends, so a request is in flight at its start and one at its end
// on each connection: leaving those out of the count while their time
// stays in the divisor reads 48.
func TestMeasureLoadRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const conc, latency, d = 2, 40 * time.Millisecond, time.Second
		lr, err := measureLoad(context.Background(), conc, d, func([]byte) error {
			time.Sleep(latency)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := lr.PerSecond(), float64(conc)/latency.Seconds(); got != want {
			t.Errorf("%d requests in %v: %v req/s, want %v", lr.Requests, lr.Elapsed, got, want)
		}
		if lr.P50 != latency || lr.P99 != latency || lr.Errors != 0 {
			t.Errorf("latencies %v / %v, %d errors; want %v and none", lr.P50, lr.P99, lr.Errors, latency)
		}
	})
}

// Failures are counted by the same rule as successes, and are not in the
// rate.
func TestMeasureLoadErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		n := 0
		lr, err := measureLoad(context.Background(), 1, time.Second, func([]byte) error {
			time.Sleep(100 * time.Millisecond)
			if n++; n%2 == 0 {
				return errors.New("boom")
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		// 10 requests end in (250 ms, 1250 ms]: at 300, 400, ..., 1200.
		if lr.Requests+lr.Errors != 10 || lr.Errors != 5 || lr.FirstErr != "boom" || lr.PerSecond() != 5 {
			t.Errorf("got %+v (%v req/s), want 5 successes and 5 failures in 1 s", lr, lr.PerSecond())
		}
	})
}
