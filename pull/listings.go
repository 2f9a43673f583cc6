package pull

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/gatehouse/gatehouse/upstream"
)

// maxListingSize caps a tag list or referrers index read from upstream.
const maxListingSize = 8 << 20

// TagList is a page of a repository's tags and upstream's Link to the
// next page ("" for the last).
type TagList struct {
	Tags []string
	Link string
}

// Tags lists a repository's tags upstream; q carries the n and last
// parameters, already validated. Tag lists are not cached: they change.
func (c *Content) Tags(ctx context.Context, up, repo string, q url.Values) (*TagList, error) {
	_, client, err := c.upstream(up)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(ctx, http.MethodGet, repo, "tags/list", q, nil)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var list struct {
		Tags []string `json:"tags"`
	}
	if err := decodeCapped(resp.Body, &list); err != nil {
		return nil, badUpstream(CodeUnknown, "upstream %s sent an invalid tag list: %v", up, err)
	}
	if list.Tags == nil {
		list.Tags = []string{}
	}
	return &TagList{Tags: list.Tags, Link: resp.Header.Get("Link")}, nil
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

// Referrers lists the manifests that refer to dgst, filtered by
// artifactType when given: the descriptors as upstream sent them. When
// upstream does not implement the referrers API, the referrers tag schema
// (`sha256-<hex>`) is tried; no referrers is an empty list, never an error.
func (c *Content) Referrers(ctx context.Context, up, repo string, dgst v1.Hash, artifactType string) ([]json.RawMessage, error) {
	_, client, err := c.upstream(up)
	if err != nil {
		return nil, err
	}
	var q url.Values
	if artifactType != "" {
		q = url.Values{"artifactType": {artifactType}}
	}
	resp, err := client.Do(ctx, http.MethodGet, repo, "referrers/"+dgst.String(), q, nil)
	var ue *upstream.Error
	if err != nil && errors.As(err, &ue) && ue.Status >= 400 && ue.Status < 500 && ue.Status != http.StatusTooManyRequests {
		// No referrers API upstream (404, 405...): the fallback tag.
		resp, err = client.Do(ctx, http.MethodGet, repo, "manifests/sha256-"+dgst.Hex, nil,
			http.Header{"Accept": {string(types.OCIImageIndex)}})
		if IsNotFound(err) {
			return []json.RawMessage{}, nil
		}
	}
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var idx struct {
		Manifests []json.RawMessage `json:"manifests"`
	}
	if err := decodeCapped(resp.Body, &idx); err != nil {
		return nil, badUpstream(CodeUnknown, "upstream %s sent an invalid referrers index: %v", up, err)
	}
	if artifactType == "" || strings.Contains(resp.Header.Get("OCI-Filters-Applied"), "artifactType") {
		if idx.Manifests == nil {
			idx.Manifests = []json.RawMessage{}
		}
		return idx.Manifests, nil
	}
	kept := []json.RawMessage{}
	for _, m := range idx.Manifests {
		var d struct {
			ArtifactType string `json:"artifactType"`
		}
		if json.Unmarshal(m, &d) == nil && d.ArtifactType == artifactType {
			kept = append(kept, m)
		}
	}
	return kept, nil
}
