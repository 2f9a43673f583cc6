package gate

import (
	"bytes"
	"context"
	"encoding/json"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	bolt "go.etcd.io/bbolt"

	"github.com/gatehouse/gatehouse/config"
	"github.com/gatehouse/gatehouse/metrics"
)

// The blob index says which judged manifests list a blob, so that a blob is
// served only as a part of something the gate let through. One entry per
// (upstream, blob, repository, manifest):
//
//	upstream \x00 blob digest \x00 repository \x00 manifest digest → blobRef
//
// Each entry is bound to what produced it: the rule's hash (which covers
// its keys, trusted root and gate.passArtifactTypes) and the vulnerability
// DB version. An entry made under another policy or DB says nothing until
// the manifest is judged again (a client's next manifest request does so).
var bucketBlobRefs = []byte("blobrefs")

// bucketAllowedV1 is the index of earlier versions (blob → admitted
// manifests, bound to nothing); it is deleted at start.
var bucketAllowedV1 = []byte("allowed")

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
}

func blobRefPrefix(upstream string, blob v1.Hash) []byte {
	return []byte(upstream + "\x00" + blob.String() + "\x00")
}

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

// setBlobRefs records (or replaces) what manifest s, judged with verdict v
// under the rule of hash ruleHash and DB dbv, says of the blobs it lists.
func setBlobRefs(tx *bolt.Tx, s *Subject, info *manifestInfo, v *Verdict, ruleHash, dbv string) error {
	b := tx.Bucket(bucketBlobRefs)
	ref, err := json.Marshal(blobRef{Kind: refKind(v), Rule: ruleHash, DB: dbv})
	if err != nil {
		return err
	}
	for _, d := range append([]v1.Descriptor{info.config}, info.layers...) {
		if d.Digest.Hex == "" {
			continue
		}
		k := append(blobRefPrefix(s.Upstream, d.Digest), s.Repo+"\x00"+s.Digest.String()...)
		if err := b.Put(k, ref); err != nil {
			return err
		}
	}
	return nil
}

// BlobAllowed reports whether a blob may be served to a client of
// upstream/repo. With gate.blobs "any", always. Otherwise, in this order:
//
//  1. an admitted image of the same repository lists it: yes (the client
//     pulls that image, which was judged with this blob in it);
//  2. a denied image of the same upstream lists it: no (deny wins over
//     artifacts and over images of other repositories);
//  3. a pass-through artifact of the same repository lists it: yes;
//  4. otherwise no.
//
// Only references made under the current rule of their repository and the
// current DB count.
func (g *Gate) BlobAllowed(ctx context.Context, upstream, repo string, dgst v1.Hash) (bool, error) {
	if g.cfg.Blobs == "any" {
		return true, nil
	}
	var found, denied, artifact bool
	err := g.db.View(func(tx *bolt.Tx) error {
		prefix := blobRefPrefix(upstream, dgst)
		c := tx.Bucket(bucketBlobRefs).Cursor()
		for k, val := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, val = c.Next() {
			refRepo, _, ok := bytes.Cut(k[len(prefix):], []byte{0})
			if !ok {
				continue
			}
			var ref blobRef
			if json.Unmarshal(val, &ref) != nil || !g.refCurrent(upstream, string(refRepo), &ref) {
				continue
			}
			same := string(refRepo) == repo
			switch ref.Kind {
			case refImage:
				if same {
					found = true
					return nil
				}
			case refDenied:
				denied = true
			case refArtifact:
				artifact = artifact || same
			}
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	switch {
	case found:
		return true, nil
	case denied:
		metrics.BlobsRefused.WithLabelValues("denied_image").Inc()
		return false, nil
	case artifact:
		return true, nil
	}
	metrics.BlobsRefused.WithLabelValues("not_admitted").Inc()
	return false, nil
}

// refCurrent reports whether a reference was made under the rule that now
// governs its repository and, for rules that scan, the current DB.
func (g *Gate) refCurrent(upstream, repo string, ref *blobRef) bool {
	rule := g.policy.Match(upstream, repo)
	if ref.Rule != rule.Hash {
		return false
	}
	if ref.Kind == refArtifact || rule.Mode == config.ModeOff {
		return true
	}
	return ref.DB == g.scanner.DBVersion()
}
