package gate

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	bolt "go.etcd.io/bbolt"
)

// ImageSummary is one row of GET /api/v1/images.
type ImageSummary struct {
	Digest   string   `json:"digest"`
	Upstream string   `json:"upstream"`
	Repo     string   `json:"repository"`
	Tags     []string `json:"tags"`
	Kind     string   `json:"kind"`
	// ArtifactType is the artifactType or config media type.
	ArtifactType string `json:"artifactType,omitempty"`
	// Platform is os/architecture[/variant], when known.
	Platform  string         `json:"platform,omitempty"`
	Verdict   string         `json:"verdict"` // admitted, denied
	Reason    string         `json:"reason"`
	Rule      string         `json:"rule,omitempty"`
	Counts    map[string]int `json:"counts"`
	ScannedAt time.Time      `json:"scannedAt,omitzero"`
	DBVersion string         `json:"dbVersion,omitempty"`
	FirstSeen time.Time      `json:"firstSeen"`
	// LastPulled and Pulls count GETs of the manifest.
	LastPulled time.Time `json:"lastPulled,omitzero"`
	Pulls      int64     `json:"pulls"`
	// Signature is the latest signature check; absent when the rule
	// verifies none.
	Signature *SignatureResult `json:"signature,omitempty"`
}

// ImageDetail is GET /api/v1/images/<digest>.
type ImageDetail struct {
	ImageRecord
	Vulns []Vuln `json:"vulnerabilities"`
}

func summary(rec *ImageRecord) ImageSummary {
	s := ImageSummary{Digest: rec.Digest, Upstream: rec.Upstream, Repo: rec.Repo, Tags: rec.Tags, Kind: rec.Kind,
		ArtifactType: rec.ArtifactType, Platform: rec.Platform, FirstSeen: rec.FirstSeen, LastPulled: rec.LastPulled,
		Pulls: rec.Pulls, Counts: map[string]int{}}
	if v := rec.Latest; v != nil {
		s.Verdict, s.Reason, s.ScannedAt, s.DBVersion = "denied", v.Reason, v.ScannedAt, v.DBVersion
		s.Signature = v.Signature
		if v.Admitted {
			s.Verdict = "admitted"
		}
		if v.Decision != nil {
			s.Rule, s.Counts = v.Decision.Rule, v.Decision.Counts
		}
	}
	return s
}

// Images lists judged manifests, newest first.
func (g *Gate) Images() ([]ImageSummary, error) {
	var out []ImageSummary
	pending := g.unflushed()
	err := g.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketImages).ForEach(func(k, v []byte) error {
			var rec ImageRecord
			if json.Unmarshal(v, &rec) == nil {
				if p, ok := pending[rec.Digest]; ok {
					addPulls(&rec, &p)
				}
				out = append(out, summary(&rec))
			}
			return nil
		})
	})
	sort.Slice(out, func(i, j int) bool { return out[i].FirstSeen.After(out[j].FirstSeen) })
	return out, err
}

// Image returns one judged manifest with every vulnerability found.
func (g *Gate) Image(dgst string) (*ImageDetail, error) {
	var d *ImageDetail
	pending := g.unflushed()
	err := g.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketImages).Get([]byte(dgst))
		if v == nil {
			return ErrNotFound
		}
		d = &ImageDetail{Vulns: []Vuln{}}
		if err := json.Unmarshal(v, &d.ImageRecord); err != nil {
			return err
		}
		if p, ok := pending[dgst]; ok {
			addPulls(&d.ImageRecord, &p)
		}
		if r := tx.Bucket(bucketReports).Get([]byte(dgst)); r != nil {
			var rep storedReport
			if err := json.Unmarshal(r, &rep); err != nil {
				return err
			}
			if rep.Vulns != nil {
				d.Vulns = rep.Vulns
			}
		}
		return nil
	})
	return d, err
}

// APIHandler serves the JSON API under /api/v1/.
func (g *Gate) APIHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/images", func(w http.ResponseWriter, r *http.Request) {
		imgs, err := g.Images()
		if err != nil {
			apiError(w, http.StatusInternalServerError, err.Error())
			return
		}
		q := r.URL.Query()
		filtered := imgs[:0]
		for _, im := range imgs {
			if (q.Get("upstream") == "" || im.Upstream == q.Get("upstream")) &&
				(q.Get("repository") == "" || strings.Contains(im.Repo, q.Get("repository"))) &&
				(q.Get("verdict") == "" || im.Verdict == q.Get("verdict")) {
				filtered = append(filtered, im)
			}
		}
		limit, offset, ok := paging(w, q.Get("limit"), q.Get("offset"))
		if !ok {
			return
		}
		total := len(filtered)
		lo := min(offset, total)
		filtered = filtered[lo : lo+min(limit, total-lo)]
		writeJSON(w, map[string]any{"total": total, "images": filtered})
	})
	mux.HandleFunc("GET /api/v1/images/{digest}", func(w http.ResponseWriter, r *http.Request) {
		dgst := r.PathValue("digest")
		if _, err := v1.NewHash(dgst); err != nil {
			apiError(w, http.StatusBadRequest, "invalid digest "+strconv.Quote(dgst))
			return
		}
		d, err := g.Image(dgst)
		if err == ErrNotFound {
			apiError(w, http.StatusNotFound, "no judged manifest "+dgst)
			return
		} else if err != nil {
			apiError(w, http.StatusInternalServerError, err.Error())
			return
		}
		writeJSON(w, d)
	})
	mux.HandleFunc("GET /api/v1/denials", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"denials": g.Denials()})
	})
	mux.HandleFunc("GET /api/v1/policy", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]any{"rules": g.policy.Rules(), "dbVersion": g.scanner.DBVersion(),
			"blobs": g.cfg.Blobs, "maxWait": g.cfg.MaxWait.D().String()})
	})
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		apiError(w, http.StatusNotFound, "no such API endpoint")
	})
	return mux
}

// Bounds of the paging parameters of GET /api/v1/images. An offset past
// the last image answers an empty page; one past maxOffset is refused, so
// that offset+limit cannot overflow.
const (
	defaultLimit = 1000
	maxLimit     = 10000
	maxOffset    = 1_000_000_000
)

// paging reads ?limit= and ?offset=, or answers 400 naming the parameter.
func paging(w http.ResponseWriter, l, o string) (limit, offset int, ok bool) {
	limit, offset = defaultLimit, 0
	var err error
	if l != "" {
		if limit, err = strconv.Atoi(l); err != nil || limit < 1 || limit > maxLimit {
			apiError(w, http.StatusBadRequest, fmt.Sprintf("limit must be a whole number from 1 to %d, not %q", maxLimit, l))
			return 0, 0, false
		}
	}
	if o != "" {
		if offset, err = strconv.Atoi(o); err != nil || offset < 0 || offset > maxOffset {
			apiError(w, http.StatusBadRequest, fmt.Sprintf("offset must be a whole number from 0 to %d, not %q", maxOffset, o))
			return 0, 0, false
		}
	}
	return limit, offset, true
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

func apiError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}
