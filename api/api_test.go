package api

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate"
	"github.com/gatehouse/gatehouse/gate/policy"
	"github.com/gatehouse/gatehouse/gate/records"
)

// The gate is the read model in production.
var _ ReadModel = (*gate.Gate)(nil)

// fakeModel serves fixed records.
type fakeModel struct {
	images  []records.ImageSummary
	details map[string]*records.ImageDetail
}

func (f *fakeModel) Images(context.Context) ([]records.ImageSummary, error) {
	// A fresh slice per call, as the records store returns.
	return append([]records.ImageSummary(nil), f.images...), nil
}
func (f *fakeModel) Image(_ context.Context, d string) (*records.ImageDetail, error) {
	if im, ok := f.details[d]; ok {
		return im, nil
	}
	return nil, records.ErrNotFound
}
func (f *fakeModel) Denials() []records.Denial { return []records.Denial{} }
func (f *fakeModel) Policy() *policy.Policy    { return policy.New(nil) }
func (f *fakeModel) DBVersion() string         { return "db-1" }

func digest(i int) string { return fmt.Sprintf("sha256:%064x", i) }

func newHandler(t *testing.T) *Handler {
	t.Helper()
	cfg, err := config.Parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	m := &fakeModel{details: map[string]*records.ImageDetail{}}
	for i, repo := range []string{"team/b", "team/a"} {
		m.images = append(m.images, records.ImageSummary{Digest: digest(i + 1), Upstream: "up.example", Repo: repo, Tags: []string{"v1"},
			Kind: "image", Verdict: "admitted", Reason: "clean", Counts: map[string]int{}, FirstSeen: now.Add(-time.Duration(i) * time.Minute)})
	}
	return New(Options{Model: m, Config: &cfg.Gate})
}

// The paging parameters of GET /api/v1/images: a negative, huge or
// non-numeric value answers 400 naming the parameter (an offset near the
// largest int once overflowed offset+limit and panicked); in range, the
// page is the slice asked for, empty past the end.
func TestAPIImagesPaging(t *testing.T) {
	h := newHandler(t)

	get := func(t *testing.T, query string) (code int, body []byte) {
		t.Helper()
		rec := httptest.NewRecorder()
		func() {
			defer func() {
				if p := recover(); p != nil {
					t.Fatalf("GET /api/v1/images?%s panicked: %v", query, p)
				}
			}()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/v1/images?"+query, nil))
		}()
		return rec.Code, rec.Body.Bytes()
	}

	huge := strconv.Itoa(math.MaxInt)
	for _, tc := range []struct{ query, param string }{
		{"offset=" + huge, "offset"},
		{"offset=" + strconv.Itoa(math.MaxInt-500), "offset"},
		{"offset=" + strconv.Itoa(maxOffset+1), "offset"},
		{"offset=" + huge + "0", "offset"}, // past int64
		{"offset=-1", "offset"},
		{"offset=" + strconv.Itoa(math.MinInt), "offset"},
		{"offset=abc", "offset"},
		{"offset=1.5", "offset"},
		{"offset=", ""}, // empty: the default
		{"limit=" + huge, "limit"},
		{"limit=" + huge + "&offset=" + strconv.Itoa(maxOffset), "limit"},
		{"limit=10001", "limit"},
		{"limit=0", "limit"},
		{"limit=-5", "limit"},
		{"limit=ten", "limit"},
		{"limit=10&offset=x", "offset"},
	} {
		t.Run(tc.query, func(t *testing.T) {
			code, body := get(t, tc.query)
			if tc.param == "" {
				if code != http.StatusOK {
					t.Fatalf("got %d %s, want 200", code, body)
				}
				return
			}
			var e struct{ Error string }
			if code != http.StatusBadRequest || json.Unmarshal(body, &e) != nil || !strings.HasPrefix(e.Error, tc.param+" ") {
				t.Fatalf("got %d %s; want 400 with an error naming %s", code, body, tc.param)
			}
		})
	}

	for _, tc := range []struct {
		query string
		rows  int
	}{
		{"", 2},
		{"limit=1", 1},
		{"limit=1&offset=1", 1},
		{"offset=2", 0},
		{"offset=3", 0},
		{fmt.Sprintf("limit=%d&offset=%d", maxLimit, maxOffset), 0},
	} {
		t.Run("page "+tc.query, func(t *testing.T) {
			code, body := get(t, tc.query)
			var list struct {
				Total  int
				Images []records.ImageSummary
			}
			if code != http.StatusOK || json.Unmarshal(body, &list) != nil || list.Total != 2 || len(list.Images) != tc.rows {
				t.Fatalf("got %d %s; want 200, total 2, %d rows", code, body, tc.rows)
			}
		})
	}
}

// One image: 400 for what is not a digest, 404 for a digest not judged,
// and a JSON error for an unknown endpoint.
func TestAPIImageErrors(t *testing.T) {
	h := newHandler(t)
	for _, tc := range []struct {
		path string
		code int
	}{
		{"/api/v1/images/latest", http.StatusBadRequest},
		{"/api/v1/images/" + digest(9), http.StatusNotFound},
		{"/api/v1/nothing", http.StatusNotFound},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
		var e struct{ Error string }
		if rec.Code != tc.code || json.Unmarshal(rec.Body.Bytes(), &e) != nil || e.Error == "" {
			t.Errorf("GET %s: %d %s; want %d with an error", tc.path, rec.Code, rec.Body, tc.code)
		}
	}
}
