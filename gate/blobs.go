package gate

import (
	"context"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/metrics"
)

// BlobAllowed reports whether a blob may be served to a client of
// upstream/repo. With gate.blobs "any", always. Otherwise, from the blob
// index (see records.Store.BlobClaims), in this order:
//
//  1. an admitted image of the same repository lists it, and no denied
//     image of the upstream lists it as another layer (another diffID):
//     yes (the client pulls that image, which was judged with this blob);
//  2. a denied image of the same upstream lists it: no (deny wins over
//     artifacts and over images of other repositories);
//  3. a pass-through artifact of the same repository lists it: yes;
//  4. otherwise no.
//
// An admitted image counts only while its verdict would still be used for
// its manifest (see cached): not past the expiry of an allowlist entry or
// exception it relied on, and, if it relied on exceptions, while those in
// force still except the same findings. Otherwise the blob is refused and
// the client, pulling the manifest again, gets it judged again.
func (g *Gate) BlobAllowed(ctx context.Context, upstream, repo string, dgst v1.Hash) (bool, error) {
	if g.cfg.Blobs == "any" {
		return true, nil
	}
	holds := func(key string) bool {
		v := g.cached(ctx, key)
		return v != nil && v.Admitted
	}
	c, err := g.records.BlobClaims(ctx, upstream, repo, dgst, g.policy.Match(upstream, repo), g.DBVersion(), g.now(), holds)
	if err != nil {
		return false, err
	}
	switch {
	case c.Image && c.Consistent():
		return true, nil
	case len(c.Denied) > 0:
		metrics.BlobsRefused.WithLabelValues("denied_image").Inc()
		return false, nil
	case c.Artifact:
		return true, nil
	}
	metrics.BlobsRefused.WithLabelValues("not_admitted").Inc()
	return false, nil
}
