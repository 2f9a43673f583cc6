// Package api is gatehouse's JSON API under /api/v1/: the judged images,
// one image with its vulnerabilities, the recent denials and the policy in
// force. It is the machine-readable twin of the console (package ui) and
// reads the same read model; like the console, it never links the
// scanners or the signature verifier.
package api

import (
	"context"
	jsonv1 "encoding/json"
	"encoding/json/jsontext"
	"encoding/json/v2"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate/policy"
	"github.com/gatehouse/gatehouse/gate/records"
)

// ReadModel is what the API reads: the gate's records and the policy and
// DB it judges with (*gate.Gate in production).
type ReadModel interface {
	// Images lists every judged manifest, newest first.
	Images(ctx context.Context) ([]records.ImageSummary, error)
	// Image returns one judged manifest with its vulnerabilities, or
	// records.ErrNotFound.
	Image(ctx context.Context, dgst string) (*records.ImageDetail, error)
	// Denials returns recent refused pulls, newest first.
	Denials() []records.Denial
	// Policy returns the rules as loaded.
	Policy() *policy.Policy
	// DBVersion identifies the loaded vulnerability DB; "" when none is.
	DBVersion() string
}

// Options configure the API.
type Options struct {
	// Model is what the API reads. Required.
	Model ReadModel
	// Config is the gate's configuration, whose blobs and maxWait
	// settings GET /api/v1/policy shows. Required.
	Config *config.Gate
	// PolicyTest serves POST /api/v1/policy/test; nil: 501.
	PolicyTest PolicyTester
	// Running is the server's whole configuration, into which a policy
	// test's proposed gate section is put (config.ParseGateProposal).
	// Required with PolicyTest.
	Running *config.Config
}

// Handler serves the JSON API under /api/v1/.
type Handler struct {
	opts    Options
	mux     *http.ServeMux
	testing chan struct{} // a policy test running
}

var _ http.Handler = (*Handler)(nil)

// New returns the API.
func New(opts Options) *Handler {
	h := &Handler{opts: opts, mux: http.NewServeMux(), testing: make(chan struct{}, 1)}
	h.mux.HandleFunc("GET /api/v1/images", h.images)
	h.mux.HandleFunc("GET /api/v1/images/{digest}", h.image)
	h.mux.HandleFunc("GET /api/v1/denials", h.denials)
	h.mux.HandleFunc("GET /api/v1/policy", h.policy)
	h.mux.HandleFunc("GET /api/v1/exceptions", h.exceptions)
	h.mux.HandleFunc("POST /api/v1/policy/test", h.policyTest)
	h.mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such API endpoint")
	})
	return h
}

// ServeHTTP serves an API request.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

// images serves GET /api/v1/images: filtered by ?upstream= (exact),
// ?repository= (substring) and ?verdict=, a page of ?limit= from ?offset=.
func (h *Handler) images(w http.ResponseWriter, r *http.Request) {
	imgs, err := h.opts.Model.Images(r.Context())
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
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
}

// image serves GET /api/v1/images/<digest>.
func (h *Handler) image(w http.ResponseWriter, r *http.Request) {
	dgst := r.PathValue("digest")
	if _, err := v1.NewHash(dgst); err != nil {
		writeError(w, http.StatusBadRequest, "invalid digest "+strconv.Quote(dgst))
		return
	}
	d, err := h.opts.Model.Image(r.Context(), dgst)
	if errors.Is(err, records.ErrNotFound) {
		writeError(w, http.StatusNotFound, "no judged manifest "+dgst)
		return
	} else if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, d)
}

// denials serves GET /api/v1/denials.
func (h *Handler) denials(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, map[string]any{"denials": h.opts.Model.Denials()})
}

// policy serves GET /api/v1/policy.
func (h *Handler) policy(w http.ResponseWriter, r *http.Request) {
	cfg := h.opts.Config
	p := h.opts.Model.Policy()
	out := map[string]any{"rules": rulesJSON(p.Rules()), "dbVersion": h.opts.Model.DBVersion(),
		"blobs": cfg.Blobs, "maxWait": cfg.MaxWait.D().String()}
	if def := p.BuiltIn(); def != nil {
		// The built-in rule judges what no configured rule matches.
		out["builtInRule"] = rulesJSON([]*policy.Rule{def})[0]
	}
	writeJSON(w, out)
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
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit must be a whole number from 1 to %d, not %q", maxLimit, l))
			return 0, 0, false
		}
	}
	if o != "" {
		if offset, err = strconv.Atoi(o); err != nil || offset < 0 || offset > maxOffset {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("offset must be a whole number from 0 to %d, not %q", maxOffset, o))
			return 0, 0, false
		}
	}
	return limit, offset, true
}

// responseOptions encode the API's answers as encoding/json does, except
// that an empty list or map is [] or {}, never null, however the record
// holding it was built.
var responseOptions = json.JoinOptions(jsonv1.DefaultOptionsV1(), json.FormatNilSliceAsNull(false), json.FormatNilMapAsNull(false),
	jsontext.WithIndent("  "))

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	b, err := json.Marshal(v, responseOptions)
	if err != nil {
		writeError(w, http.StatusInternalServerError, "encoding the answer: "+err.Error())
		return
	}
	w.Write(append(b, '\n'))
}

// writeError is the one writer of the API's errors: {"error": msg}.
func writeError(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	jsonv1.NewEncoder(w).Encode(map[string]string{"error": msg})
}
