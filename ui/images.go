package ui

import (
	"cmp"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate/records"
)

// Page sizes of the images list.
const (
	defaultPageSize = 50
	maxPageSize     = 500
)

// sortKeys are the columns the images list sorts by.
var sortKeys = []string{"upstream", "repository", "verdict", "severity", "first", "last", "pulls"}

// imageQuery is the images page's query: every parameter is validated, so
// a bookmark either shows what it says or a 400 that says what is wrong.
type imageQuery struct {
	Upstream, Repo, Verdict, Severity string
	Sort, Order                       string
	Page, Size                        int
}

func parseImageQuery(q url.Values) (imageQuery, error) {
	iq := imageQuery{Upstream: q.Get("upstream"), Repo: q.Get("repository"), Verdict: q.Get("verdict"),
		Severity: q.Get("severity"), Sort: q.Get("sort"), Order: q.Get("order"), Page: 1, Size: defaultPageSize}
	if iq.Verdict != "" && iq.Verdict != "admitted" && iq.Verdict != "denied" {
		return iq, fmt.Errorf("verdict: %q is not admitted or denied", iq.Verdict)
	}
	if iq.Severity != "" && !slices.Contains(config.Severities, iq.Severity) {
		return iq, fmt.Errorf("severity: %q is not one of %s", iq.Severity, strings.Join(config.Severities, ", "))
	}
	if iq.Sort == "" {
		iq.Sort = "last"
	} else if !slices.Contains(sortKeys, iq.Sort) {
		return iq, fmt.Errorf("sort: %q is not one of %s", iq.Sort, strings.Join(sortKeys, ", "))
	}
	switch iq.Order {
	case "":
		iq.Order = defaultOrder(iq.Sort)
	case "asc", "desc":
	default:
		return iq, fmt.Errorf("order: %q is not asc or desc", iq.Order)
	}
	var err error
	if s := q.Get("page"); s != "" {
		if iq.Page, err = strconv.Atoi(s); err != nil || iq.Page < 1 {
			return iq, fmt.Errorf("page: %q is not a page number (1, 2, ...)", s)
		}
	}
	if s := q.Get("size"); s != "" {
		if iq.Size, err = strconv.Atoi(s); err != nil || iq.Size < 1 || iq.Size > maxPageSize {
			return iq, fmt.Errorf("size: %q is not a page size from 1 to %d", s, maxPageSize)
		}
	}
	return iq, nil
}

// defaultOrder is A to Z for names, newest or most first for the rest.
func defaultOrder(sort string) string {
	if sort == "upstream" || sort == "repository" {
		return "asc"
	}
	return "desc"
}

// OrderChanged reports an order other than the sort key's default.
func (iq imageQuery) OrderChanged() bool { return iq.Order != defaultOrder(iq.Sort) }

// values writes the query back, leaving defaults out so links stay short.
func (iq imageQuery) values() url.Values {
	v := url.Values{}
	add := func(k, val, def string) {
		if val != def {
			v.Set(k, val)
		}
	}
	add("upstream", iq.Upstream, "")
	add("repository", iq.Repo, "")
	add("verdict", iq.Verdict, "")
	add("severity", iq.Severity, "")
	add("sort", iq.Sort, "last")
	add("order", iq.Order, defaultOrder(iq.Sort))
	add("page", strconv.Itoa(iq.Page), "1")
	add("size", strconv.Itoa(iq.Size), strconv.Itoa(defaultPageSize))
	return v
}

func (iq imageQuery) pageLink(n int) string {
	iq.Page = n
	return iq.link()
}

// link is the bookmarkable address of the query.
func (iq imageQuery) link() string {
	if e := iq.values().Encode(); e != "" {
		return "/ui/?" + e
	}
	return "/ui/"
}

// sevRank is a severity's place, worst first; worse-or-equal filters use it.
func sevRank(s string) int {
	if i := slices.Index(config.Severities, s); i >= 0 {
		return i
	}
	return len(config.Severities)
}

func (iq imageQuery) match(im *records.ImageSummary) bool {
	if iq.Upstream != "" && im.Upstream != iq.Upstream {
		return false
	}
	if iq.Repo != "" && !strings.Contains(im.Repo, iq.Repo) {
		return false
	}
	if iq.Verdict != "" && im.Verdict != iq.Verdict {
		return false
	}
	if iq.Severity != "" {
		// At least one finding of this severity or worse.
		for s, n := range im.Counts {
			if n > 0 && sevRank(s) <= sevRank(iq.Severity) {
				return true
			}
		}
		return false
	}
	return true
}

// severityCmp orders by the worst findings: more CRITICAL first, then HIGH...
func severityCmp(a, b *records.ImageSummary) int {
	for _, s := range config.Severities {
		if c := cmp.Compare(a.Counts[s], b.Counts[s]); c != 0 {
			return c
		}
	}
	return 0
}

func (iq imageQuery) compare(a, b *records.ImageSummary) int {
	var c int
	switch iq.Sort {
	case "upstream":
		c = cmp.Or(strings.Compare(a.Upstream, b.Upstream), strings.Compare(a.Repo, b.Repo))
	case "repository":
		c = cmp.Or(strings.Compare(a.Repo, b.Repo), strings.Compare(a.Upstream, b.Upstream))
	case "verdict":
		c = strings.Compare(a.Verdict, b.Verdict)
	case "severity":
		c = severityCmp(a, b)
	case "first":
		c = a.FirstSeen.Compare(b.FirstSeen)
	case "last":
		c = lastPulled(a).Compare(lastPulled(b))
	case "pulls":
		c = cmp.Compare(a.Pulls, b.Pulls)
	}
	if iq.Order == "desc" {
		c = -c
	}
	// A stable order for equal keys, so pages never overlap.
	return cmp.Or(c, strings.Compare(a.Digest, b.Digest))
}

// lastPulled is the last GET, or the first judgement of a manifest only
// ever resolved by HEAD.
func lastPulled(im *records.ImageSummary) time.Time {
	if !im.LastPulled.IsZero() {
		return im.LastPulled
	}
	return im.FirstSeen
}

// imageRow is one row of the list with what the template shows.
type imageRow struct {
	records.ImageSummary
	Type   string
	Total  int
	Sevs   []sevCount
	SigTxt string // verified, unverified, or "" when not required
}

type sevCount struct {
	Severity string
	N        int
}

func newRow(im records.ImageSummary) imageRow {
	r := imageRow{ImageSummary: im, Type: artifactLabel(im.Kind, im.ArtifactType, im.Tags)}
	for _, s := range config.Severities {
		if n := im.Counts[s]; n > 0 {
			r.Sevs = append(r.Sevs, sevCount{s, n})
			r.Total += n
		}
	}
	if im.Signature != nil {
		r.SigTxt = "unverified"
		if im.Signature.Verified {
			r.SigTxt = "verified"
		}
	}
	return r
}

// column is a sortable column header.
type column struct {
	Key, Label, Link, AriaSort, Arrow string
}

type imagesData struct {
	Query     imageQuery
	Rows      []imageRow
	Total     int // rows matching the filter
	All       int // rows judged
	Pages     int
	Prev      string
	Next      string
	First     int // 1-based number of the first row shown
	Last      int
	Upstreams []string
	Columns   map[string]column
	Severs    []string
}

func (h *Handler) images(w http.ResponseWriter, r *http.Request) {
	iq, err := parseImageQuery(r.URL.Query())
	if err != nil {
		h.fail(w, http.StatusBadRequest, "Bad query parameter "+err.Error()+".")
		return
	}
	all, err := h.imageList(r.Context())
	if err != nil {
		h.opts.Log.Error("listing images for the web console", "err", err)
		h.fail(w, http.StatusInternalServerError, "The image records could not be read; see gatehouse's log.")
		return
	}
	d := imagesData{Query: iq, All: len(all), Columns: map[string]column{}, Severs: config.Severities}
	ups := map[string]bool{}
	var matched []*records.ImageSummary
	for i := range all {
		ups[all[i].Upstream] = true
		if iq.match(&all[i]) {
			matched = append(matched, &all[i])
		}
	}
	for u := range ups {
		d.Upstreams = append(d.Upstreams, u)
	}
	slices.Sort(d.Upstreams)
	slices.SortFunc(matched, iq.compare)
	d.Total = len(matched)
	d.Pages = max(1, (d.Total+iq.Size-1)/iq.Size)
	if iq.Page > d.Pages {
		h.fail(w, http.StatusNotFound, fmt.Sprintf("Page %d does not exist: there are %d pages of %d images.", iq.Page, d.Pages, iq.Size))
		return
	}
	lo, hi := (iq.Page-1)*iq.Size, min(iq.Page*iq.Size, d.Total)
	for _, im := range matched[lo:hi] {
		d.Rows = append(d.Rows, newRow(*im))
	}
	d.First, d.Last = lo+1, hi
	if iq.Page > 1 {
		d.Prev = iq.pageLink(iq.Page - 1)
	}
	if iq.Page < d.Pages {
		d.Next = iq.pageLink(iq.Page + 1)
	}
	labels := map[string]string{"upstream": "Upstream", "repository": "Repository", "verdict": "Verdict",
		"severity": "Vulnerabilities", "first": "First pulled", "last": "Last pulled", "pulls": "Pulls"}
	for _, k := range sortKeys {
		c := column{Key: k, Label: labels[k], AriaSort: "none"}
		order := defaultOrder(k)
		if iq.Sort == k {
			c.AriaSort, c.Arrow = "ascending", "▲"
			if iq.Order == "desc" {
				c.AriaSort, c.Arrow = "descending", "▼"
			}
			order = map[string]string{"asc": "desc", "desc": "asc"}[iq.Order]
		}
		sq := iq
		sq.Sort, sq.Order, sq.Page = k, order, 1
		c.Link = sq.link()
		d.Columns[k] = c
	}
	h.render(w, http.StatusOK, "images", page{Title: "Images", Nav: "images", Data: d})
}

// artifactLabel names what a manifest is, from the gate's kind, its
// artifact (or config) media type and, for cosign's tag-based signatures
// whose manifests carry an ordinary image config, its tag.
func artifactLabel(kind, artifactType string, tags []string) string {
	switch {
	case kind == "index":
		return "index"
	case strings.Contains(artifactType, "helm"):
		return "Helm chart"
	case strings.Contains(artifactType, "cosign") || strings.Contains(artifactType, "sigstore") ||
		strings.Contains(artifactType, "notary.signature"):
		return "signature"
	case strings.Contains(artifactType, "spdx") || strings.Contains(artifactType, "cyclonedx"):
		return "SBOM"
	case strings.Contains(artifactType, "in-toto") || strings.Contains(artifactType, "dsse"):
		return "attestation"
	case strings.Contains(artifactType, "trivy"):
		return "vulnerability DB"
	}
	if kind == "artifact" {
		for _, t := range tags {
			switch {
			case strings.HasSuffix(t, ".sig"):
				return "signature"
			case strings.HasSuffix(t, ".att"):
				return "attestation"
			case strings.HasSuffix(t, ".sbom"):
				return "SBOM"
			}
		}
		return "artifact"
	}
	return "image"
}
