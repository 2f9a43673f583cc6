package ui

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate/policy"
	"github.com/gatehouse/gatehouse/gate/records"
)

type imageData struct {
	records.ImageDetail
	Type      string
	Vulns     []records.Vuln // after the filter
	Sevs      []sevCount     // all findings by severity
	Severity  string
	Search    string
	Severs    []string
	LayerSize int64
}

func (h *Handler) image(w http.ResponseWriter, r *http.Request) {
	dgst := r.PathValue("digest")
	if _, err := v1.NewHash(dgst); err != nil {
		h.fail(w, http.StatusBadRequest, fmt.Sprintf("%q is not a digest (sha256:<64 hex digits>).", dgst))
		return
	}
	q := r.URL.Query()
	sev, search := q.Get("severity"), strings.TrimSpace(q.Get("q"))
	if sev != "" && !slices.Contains(config.Severities, sev) {
		h.fail(w, http.StatusBadRequest, fmt.Sprintf("Bad query parameter severity: %q is not one of %s.", sev, strings.Join(config.Severities, ", ")))
		return
	}
	d, err := h.opts.Source.Image(r.Context(), dgst)
	if errors.Is(err, records.ErrNotFound) {
		h.fail(w, http.StatusNotFound, "gatehouse has not judged a manifest "+dgst+".")
		return
	} else if err != nil {
		h.opts.Log.Error("reading image for the web console", "digest", dgst, "err", err)
		h.fail(w, http.StatusInternalServerError, "The image record could not be read; see gatehouse's log.")
		return
	}
	data := imageData{ImageDetail: *d, Type: artifactLabel(d.Kind, d.ArtifactType, d.Tags), Severity: sev, Search: search, Severs: config.Severities}
	counts := map[string]int{}
	needle := strings.ToLower(search)
	for _, v := range d.Vulns {
		counts[v.Severity]++
		if sev != "" && v.Severity != sev {
			continue
		}
		if needle != "" && !strings.Contains(strings.ToLower(v.ID+"\x00"+v.PkgName+"\x00"+v.Title+"\x00"+v.PkgPath), needle) {
			continue
		}
		data.Vulns = append(data.Vulns, v)
	}
	for _, s := range config.Severities {
		if counts[s] > 0 {
			data.Sevs = append(data.Sevs, sevCount{s, counts[s]})
		}
	}
	for _, l := range d.Layers {
		data.LayerSize += l.Size
	}
	h.render(w, http.StatusOK, "image", page{Title: d.Repo + "@" + shortDigest(d.Digest), Nav: "images", Data: data})
}

type policyData struct {
	Rules []*policy.Rule
	// Default is the built-in rule for repositories no rule matches; nil
	// when a configured rule matches everything.
	Default *policy.Rule
	DB      DBStatus
	DBErr   string
	DBAge   time.Duration
	// DBStale: the DB is older than gate.db.maxAge.
	DBStale bool
	Used    int64
	Limit   int64
	UsedPct int
	Now     time.Time
}

func (h *Handler) policy(w http.ResponseWriter, r *http.Request) {
	d := policyData{Rules: h.opts.Source.Policy().Rules(), Default: h.opts.Source.Policy().BuiltIn(), Now: h.opts.Now()}
	if db, err := h.opts.DB(); err != nil {
		d.DBErr = err.Error()
	} else {
		d.DB, d.DBAge = db, d.Now.Sub(db.UpdatedAt)
		d.DBStale = db.MaxAge > 0 && d.DBAge > db.MaxAge
	}
	d.Used, d.Limit = h.opts.Cache()
	if d.Limit > 0 {
		d.UsedPct = int(min(100, d.Used*100/d.Limit))
	}
	h.render(w, http.StatusOK, "policy", page{Title: "Policy", Nav: "policy", Data: d})
}

// denialRow is a refused pull; Judged says whether its manifest has a
// record (and so an image page) — a pull refused before judging, e.g. for
// a failed signature check, has none.
type denialRow struct {
	records.Denial
	Judged bool
}

func (h *Handler) denials(w http.ResponseWriter, r *http.Request) {
	list, err := h.imageList(r.Context())
	if err != nil {
		h.opts.Log.Error("web console: reading image records", "err", err)
		h.fail(w, http.StatusInternalServerError, "cannot read the image records")
		return
	}
	judged := make(map[string]bool, len(list))
	for _, im := range list {
		judged[im.Digest] = true
	}
	ds := h.opts.Source.Denials()
	rows := make([]denialRow, len(ds))
	for i, d := range ds {
		rows[i] = denialRow{Denial: d, Judged: judged[d.Digest]}
	}
	h.render(w, http.StatusOK, "denials", page{Title: "Denials", Nav: "denials", Data: rows})
}
