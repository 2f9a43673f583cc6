package proxy

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/gatehouse/gatehouse/proxy/upstream"
)

// maxListingSize caps a tag list or referrers index read from upstream.
const maxListingSize = 8 << 20

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
	resp, err := h.client(rt).Do(r.Context(), http.MethodGet, rt.Repo, "tags/list", q, nil)
	if err != nil {
		return asError(err, CodeNameUnknown)
	}
	defer resp.Body.Close()
	var list struct {
		Name string   `json:"name"`
		Tags []string `json:"tags"`
	}
	if err := decodeCapped(resp.Body, &list); err != nil {
		return &Error{Code: CodeUnknown, Status: http.StatusBadGateway, Message: "upstream " + rt.Upstream.Name + " sent an invalid tag list: " + err.Error()}
	}
	if list.Tags == nil {
		list.Tags = []string{}
	}
	list.Name = rt.Name
	if link := nextLink(resp.Header.Get("Link"), rt); link != "" {
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

func decodeCapped(r io.Reader, v any) error {
	data, err := io.ReadAll(io.LimitReader(r, maxListingSize+1))
	if err != nil {
		return err
	}
	if len(data) > maxListingSize {
		return errors.New("larger than 8 MiB")
	}
	return json.Unmarshal(data, v)
}

// descriptor is the part of a referrer's descriptor the filter reads; the
// descriptors themselves are passed on as upstream sent them.
type descriptor struct {
	ArtifactType string `json:"artifactType"`
}

type index struct {
	SchemaVersion int               `json:"schemaVersion"`
	MediaType     string            `json:"mediaType"`
	Manifests     []json.RawMessage `json:"manifests"`
}

// serveReferrers answers the referrers API from upstream. When upstream does
// not implement it, the referrers tag schema (`sha256-<hex>`) is tried; when
// there are none, the answer is an empty index, never a 404.
func (h *Handler) serveReferrers(w http.ResponseWriter, r *http.Request, rt *Route) *Error {
	artifactType := rt.Query.Get("artifactType")
	var q url.Values
	if artifactType != "" {
		q = url.Values{"artifactType": {artifactType}}
	}
	client := h.client(rt)
	resp, err := client.Do(r.Context(), http.MethodGet, rt.Repo, "referrers/"+rt.Ref, q, nil)
	var ue *upstream.Error
	if err != nil && errors.As(err, &ue) && ue.Status >= 400 && ue.Status < 500 && ue.Status != http.StatusTooManyRequests {
		// No referrers API upstream (404, 405...): the fallback tag.
		resp, err = client.Do(r.Context(), http.MethodGet, rt.Repo, "manifests/sha256-"+rt.Digest.Hex, nil,
			http.Header{"Accept": {MediaTypeOCIIndex}})
		if errors.As(err, &ue) && ue.NotFound() {
			resp, err = nil, nil
		}
	}
	if err != nil {
		return asError(err, CodeManifestUnknown)
	}
	idx := index{SchemaVersion: 2, MediaType: MediaTypeOCIIndex, Manifests: []json.RawMessage{}}
	filtered := false
	if resp != nil {
		defer resp.Body.Close()
		if err := decodeCapped(resp.Body, &idx); err != nil {
			return &Error{Code: CodeUnknown, Status: http.StatusBadGateway, Message: "upstream " + rt.Upstream.Name + " sent an invalid referrers index: " + err.Error()}
		}
		idx.SchemaVersion, idx.MediaType = 2, MediaTypeOCIIndex
		if idx.Manifests == nil {
			idx.Manifests = []json.RawMessage{}
		}
		filtered = strings.Contains(resp.Header.Get("OCI-Filters-Applied"), "artifactType")
	}
	if artifactType != "" && !filtered {
		kept := idx.Manifests[:0]
		for _, m := range idx.Manifests {
			var d descriptor
			if json.Unmarshal(m, &d) == nil && d.ArtifactType == artifactType {
				kept = append(kept, m)
			}
		}
		idx.Manifests = kept
	}
	if artifactType != "" {
		w.Header().Set("OCI-Filters-Applied", "artifactType")
	}
	body, _ := json.Marshal(idx)
	w.Header().Set("Content-Type", MediaTypeOCIIndex)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write(body)
	}
	return nil
}
