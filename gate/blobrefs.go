package gate

import (
	"bytes"
	"context"
	"encoding/json"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/gate/policy"
	"github.com/gatehouse/gatehouse/metrics"
)

// The blob index says which judged manifests list a blob, so that a blob is
// served only as a part of something the gate let through. Two key spaces,
// one entry per (upstream, blob, repository, manifest):
//
//	"o" upstream \x00 blob \x00 repository \x00 manifest → blobRef (opens: admitted image or artifact)
//	"d" upstream \x00 blob \x00 repository \x00 manifest → blobRef (a denied image lists it)
//
// An opening entry counts only while it was made under the rule that now
// governs its repository and, for rules that scan, the current DB. A denial
// counts until a judgement of the same manifest in the same repository
// replaces it (fail closed: a policy or DB change does not reopen a denied
// image's layers). Lookups read the request's repository's entries and the
// blob's denials, never the whole index.
var bucketBlobRefs = []byte("blobrefs2")

// Index buckets of earlier versions, deleted at start.
var oldBlobBuckets = [][]byte{[]byte("allowed"), []byte("blobrefs")}

// Kinds of blob references.
const (
	refImage    = "image"    // an admitted image: opens its config and layers
	refArtifact = "artifact" // a pass-through artifact: opens its blobs in its repository only
	refDenied   = "denied"   // a denied image: its blobs stay refused
)

// blobRef is the value of a blob index entry.
type blobRef struct {
	Kind string `json:"k"`
	Rule string `json:"h"` // rule hash
	DB   string `json:"d"` // vulnerability DB version ("" for rules that do not scan)
	// DiffID is the uncompressed digest the image's config declares for
	// this layer; "" for configs, artifacts and records of earlier versions.
	DiffID string `json:"i,omitempty"`
}

func openKey(upstream string, blob v1.Hash, repo string) []byte {
	return []byte("o" + upstream + "\x00" + blob.String() + "\x00" + repo + "\x00")
}

func denyPrefix(upstream string, blob v1.Hash) []byte {
	return []byte("d" + upstream + "\x00" + blob.String() + "\x00")
}

// emptyJSON is the digest of "{}", the OCI empty descriptor's blob.
var emptyJSON = v1.Hash{Algorithm: "sha256", Hex: "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"}

// refKind is the kind of reference a verdict gives the blobs it lists.
func refKind(v *Verdict) string {
	switch {
	case !v.Admitted:
		return refDenied
	case v.Kind == "artifact":
		return refArtifact
	default:
		return refImage
	}
}

// setBlobRefs records what manifest s, judged with verdict v under the rule
// of hash ruleHash and DB dbv, says of the blobs it lists, replacing what
// an earlier judgement of it in the same repository said.
func setBlobRefs(tx *bolt.Tx, s *Subject, info *manifestInfo, v *Verdict, ruleHash, dbv string) error {
	b := tx.Bucket(bucketBlobRefs)
	kind := refKind(v)
	for i, d := range append([]v1.Descriptor{info.config}, info.layers...) {
		if d.Digest.Hex == "" {
			continue
		}
		ref := blobRef{Kind: kind, Rule: ruleHash, DB: dbv}
		if i > 0 && i-1 < len(info.diffIDs) {
			ref.DiffID = info.diffIDs[i-1].String()
		}
		val, err := json.Marshal(ref)
		if err != nil {
			return err
		}
		open := append(openKey(s.Upstream, d.Digest, s.Repo), s.Digest.String()...)
		deny := append(denyPrefix(s.Upstream, d.Digest), s.Repo+"\x00"+s.Digest.String()...)
		put, del := open, deny
		if kind == refDenied {
			put, del = deny, open
		}
		if err := b.Delete(del); err != nil {
			return err
		}
		if kind == refDenied && (i == 0 || d.Digest == emptyJSON) {
			// A denied image's config is not runnable, and the empty JSON
			// blob is every artifact's config: listing either must not
			// close it for other manifests.
			continue
		}
		if err := b.Put(put, val); err != nil {
			return err
		}
	}
	return nil
}

// BlobAllowed reports whether a blob may be served to a client of
// upstream/repo. With gate.blobs "any", always. Otherwise, in this order:
//
//  1. an admitted image of the same repository lists it, and no denied
//     image of the upstream lists it as another layer (another diffID):
//     yes (the client pulls that image, which was judged with this blob);
//  2. a denied image of the same upstream lists it: no (deny wins over
//     artifacts and over images of other repositories);
//  3. a pass-through artifact of the same repository lists it: yes;
//  4. otherwise no.
func (g *Gate) BlobAllowed(ctx context.Context, upstream, repo string, dgst v1.Hash) (bool, error) {
	if g.cfg.Blobs == "any" {
		return true, nil
	}
	var image, artifact bool
	var diffIDs []string // claimed by the admitted images of repo
	var denials []string // claimed by the denied images of the upstream
	rule := g.policy.Match(upstream, repo)
	dbv := g.scanner.DBVersion()
	err := g.db.View(func(tx *bolt.Tx) error {
		c := tx.Bucket(bucketBlobRefs).Cursor()
		prefix := openKey(upstream, dgst, repo)
		for k, val := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, val = c.Next() {
			var ref blobRef
			if json.Unmarshal(val, &ref) != nil || !ref.current(rule, dbv) {
				continue
			}
			switch ref.Kind {
			case refImage:
				image = true
				diffIDs = append(diffIDs, ref.DiffID)
			case refArtifact:
				artifact = true
			}
		}
		prefix = denyPrefix(upstream, dgst)
		for k, val := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, val = c.Next() {
			var ref blobRef
			if json.Unmarshal(val, &ref) == nil {
				denials = append(denials, ref.DiffID)
			}
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	switch {
	case image && consistent(diffIDs, denials):
		return true, nil
	case len(denials) > 0:
		metrics.BlobsRefused.WithLabelValues("denied_image").Inc()
		return false, nil
	case artifact:
		return true, nil
	}
	metrics.BlobsRefused.WithLabelValues("not_admitted").Inc()
	return false, nil
}

// consistent reports whether the images that opened a blob and those that
// were denied with it say the same of it. A scan does not read a layer
// whose declared diffID it has analysed before, so an image could list a
// denied image's layer under a clean layer's diffID and be admitted
// without that layer being read; such a blob is claimed with two diffIDs,
// and stays refused. An empty claim (a record of an earlier version) is
// unknown, not a conflict.
func consistent(opened, denied []string) bool {
	for _, o := range opened {
		for _, d := range denied {
			if o != "" && d != "" && o != d {
				return false
			}
		}
	}
	return true
}

// current reports whether an opening reference was made under rule, the
// one that now governs its repository, and, for rules that scan, under the
// current DB dbv.
func (ref *blobRef) current(rule *policy.Rule, dbv string) bool {
	if ref.Rule != rule.Hash {
		return false
	}
	return ref.Kind == refArtifact || rule.Mode == config.ModeOff || ref.DB == dbv
}
