package proxy

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/types"
)

// maxTagsPage bounds the n parameter of tags/list.
const maxTagsPage = 10000

// serveTags answers tags/list from upstream, with n/last pagination and a
// Link header rewritten to the client's own view of the repository.
func (h *Handler) serveTags(w http.ResponseWriter, r *http.Request, rt *Route) *Error {
	q := url.Values{}
	if vs, ok := rt.Query["n"]; ok {
		n, err := strconv.Atoi(vs[0])
		if len(vs) != 1 || err != nil || n < 0 || n > maxTagsPage {
			return &Error{Code: "PAGINATION_NUMBER_INVALID", Status: http.StatusBadRequest,
				Message: "n must be a whole number from 0 to " + strconv.Itoa(maxTagsPage)}
		}
		q.Set("n", vs[0])
	}
	if vs, ok := rt.Query["last"]; ok {
		if len(vs) != 1 || !tagRE.MatchString(vs[0]) {
			return errorf(CodeNameInvalid, "last must be a single tag")
		}
		q.Set("last", vs[0])
	}
	page, err := h.content.Tags(r.Context(), rt.Upstream.Name, rt.Repo, q)
	if err != nil {
		return asError(err, CodeNameUnknown)
	}
	list := struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}{rt.Name, page.Tags}
	if link := nextLink(page.Link, rt); link != "" {
		w.Header().Set("Link", link)
	}
	body, _ := json.Marshal(list)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write(body)
	}
	return nil
}

// nextLink rewrites upstream's `<...?last=x&n=y>; rel="next"` to a link on
// gatehouse that keeps the client's repository name and ns.
func nextLink(upstreamLink string, rt *Route) string {
	if upstreamLink == "" {
		return ""
	}
	start, end := strings.IndexByte(upstreamLink, '<'), strings.IndexByte(upstreamLink, '>')
	if start < 0 || end < start || !strings.Contains(upstreamLink[end:], `rel="next"`) {
		return ""
	}
	u, err := url.Parse(upstreamLink[start+1 : end])
	if err != nil {
		return ""
	}
	q := url.Values{}
	for _, k := range []string{"n", "last"} {
		if v := u.Query().Get(k); v != "" {
			q.Set(k, v)
		}
	}
	if rt.NS != "" {
		q.Set("ns", rt.NS)
	}
	return "</v2/" + rt.Name + "/tags/list?" + q.Encode() + `>; rel="next"`
}

// serveReferrers answers the referrers API: upstream's (or its referrers
// tag's) descriptors, filtered by artifactType; an empty index when there
// are none, never a 404.
func (h *Handler) serveReferrers(w http.ResponseWriter, r *http.Request, rt *Route) *Error {
	artifactType := rt.Query.Get("artifactType")
	descs, err := h.content.Referrers(r.Context(), rt.Upstream.Name, rt.Repo, rt.Digest, artifactType)
	if err != nil {
		return asError(err, CodeManifestUnknown)
	}
	if artifactType != "" {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	idx := struct {
		SchemaVersion int               `json:"schemaVersion"`
		MediaType     types.MediaType   `json:"mediaType"`
		Manifests     []json.RawMessage `json:"manifests"`
	}{2, types.OCIImageIndex, descs}
	body, _ := json.Marshal(idx)
	w.Header().Set("Content-Type", string(types.OCIImageIndex))
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write(body)
	}
	return nil
}
