package gate

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
)

// The paging parameters of GET /api/v1/images: a negative, huge or
// non-numeric value answers 400 naming the parameter (an offset near the
// largest int once overflowed offset+limit and panicked); in range, the
// page is the slice asked for, empty past the end.
func TestAPIImagesPaging(t *testing.T) {
	f := newFixture(t, policyYAML)
	f.g.Check(context.Background(), f.image(t, "team/a"))
	f.g.Check(context.Background(), f.image(t, "team/b"))
	h := f.g.APIHandler()

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
				Images []ImageSummary
			}
			if code != http.StatusOK || json.Unmarshal(body, &list) != nil || list.Total != 2 || len(list.Images) != tc.rows {
				t.Fatalf("got %d %s; want 200, total 2, %d rows", code, body, tc.rows)
			}
		})
	}
}
