package pull

import (
	"context"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// ResolveTag asks upstream for the digest of upstream/repo:tag now, with
// a HEAD (Docker Hub does not count HEADs against its pull limit),
// whatever the age of the cached mapping, and records the mapping, which
// the clients' pulls then use while it is fresh. gate.watch (package
// warm) calls it to notice a tag that moved before the mapping's TTL
// would have; concurrent calls for one tag share one request.
func (c *Content) ResolveTag(ctx context.Context, up, repo, tag string) (v1.Hash, error) {
	u, _, err := c.upstream(up)
	if err != nil {
		return v1.Hash{}, err
	}
	return c.revalidateTag(ctx, u, repo, tag)
}
