package records

import (
	"context"
	"encoding/json"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/gate/policy"
	"github.com/gatehouse/gatehouse/storage"
)

// The blob index says which judged manifests list a blob, so that a blob is
// served only as a part of something the gate let through. Two key spaces,
// one entry per (upstream, blob, repository, manifest):
//
//	"o" upstream \x00 blob \x00 repository \x00 manifest → blobRef (opens: admitted image or artifact)
//	"d" upstream \x00 blob \x00 repository \x00 manifest → blobRef (a denied image lists it)
//
// An opening entry counts only while it was made under the rule that now
// governs its repository and, for rules that scan, the current DB, and
// while the verdict that made it would still be used for its manifest:
// the allowlist entries and exceptions it relied on have not expired, and
// the exceptions in force still except the same findings. A denial
// counts until a judgement of the same manifest in the same repository
// replaces it (fail closed: a policy or DB change does not reopen a denied
// image's layers). Lookups read the request's repository's entries and the
// blob's denials, never the whole index.
const tableBlobRefs = "blobrefs2"

// Index tables of earlier versions, dropped at start.
var oldBlobTables = []string{"allowed", "blobrefs"}

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
	// Until is when the first allowlist entry or exception the verdict
	// relied on expires (its Decision.ValidUntil); zero: none.
	Until time.Time `json:"u,omitzero"`
	// Plain: the verdict relied on no exception and blocked on nothing an
	// exception could cover, so the entry opens by itself until Until.
	// Otherwise (and for records of earlier versions) it opens only while
	// the gate, asked of the verdict, says the verdict holds.
	Plain bool `json:"p,omitempty"`
}

// newBlobRef is the reference verdict v gives the blobs it lists.
func newBlobRef(v *Verdict) blobRef {
	ref := blobRef{Kind: refKind(v), Rule: v.PolicyHash, DB: v.DBVersion, Plain: true}
	if d := v.Decision; d != nil {
		ref.Until = d.ValidUntil
		ref.Plain = len(d.Excepted) == 0 && len(d.Blocking) == 0
	}
	return ref
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

// setBlobRefs records what manifest m, judged with verdict v (under the
// rule of hash v.PolicyHash and DB v.DBVersion), says of the blobs it
// lists, replacing what an earlier judgement of it in the same repository
// said.
func setBlobRefs(tx storage.Tx, m *Manifest, v *Verdict) error {
	base := newBlobRef(v)
	kind := base.Kind
	for i, d := range append([]v1.Descriptor{m.Config}, m.Layers...) {
		if d.Digest.Hex == "" {
			continue
		}
		ref := base
		if i > 0 && i-1 < len(m.DiffIDs) {
			ref.DiffID = m.DiffIDs[i-1].String()
		}
		val, err := json.Marshal(ref)
		if err != nil {
			return err
		}
		open := append(openKey(m.Upstream, d.Digest, m.Repo), m.Digest.String()...)
		deny := append(denyPrefix(m.Upstream, d.Digest), m.Repo+"\x00"+m.Digest.String()...)
		put, del := open, deny
		if kind == refDenied {
			put, del = deny, open
		}
		if err := tx.Delete(tableBlobRefs, del); err != nil {
			return err
		}
		if kind == refDenied && (i == 0 || d.Digest == emptyJSON) {
			// A denied image's config is not runnable, and the empty JSON
			// blob is every artifact's config: listing either must not
			// close it for other manifests.
			continue
		}
		if err := tx.Put(tableBlobRefs, put, val); err != nil {
			return err
		}
	}
	return nil
}

// BlobClaims is what the judged manifests say of one blob for a client of
// one repository.
type BlobClaims struct {
	// Image: an admitted image of the repository, judged under the rule
	// and DB now in force, lists the blob; Opened are the diffIDs those
	// images declare for it.
	Image  bool
	Opened []string
	// Artifact: a pass-through artifact of the repository lists it.
	Artifact bool
	// Denied are the diffIDs the denied images of the upstream declare for
	// it (one entry per denied image; "" for a config or a record of an
	// earlier version).
	Denied []string
}

// Consistent reports whether the images that opened a blob and those that
// were denied with it say the same of it. A scan does not read a layer
// whose declared diffID it has analysed before, so an image could list a
// denied image's layer under a clean layer's diffID and be admitted
// without that layer being read; such a blob is claimed with two diffIDs,
// and stays refused. An empty claim (a record of an earlier version) is
// unknown, not a conflict.
func (c *BlobClaims) Consistent() bool {
	for _, o := range c.Opened {
		for _, d := range c.Denied {
			if o != "" && d != "" && o != d {
				return false
			}
		}
	}
	return true
}

// BlobClaims reads the blob index for blob dgst as served to a client of
// upstream/repo, whose rule is rule, with DB dbv loaded, at now: the
// repository's opening entries still current, and the upstream's denials.
// An admitted image's entry that is not Plain counts only when holds
// reports true of its verdict's key (see VerdictKey); holds is called
// after the read, outside its transaction.
func (s *Store) BlobClaims(ctx context.Context, upstream, repo string, dgst v1.Hash, rule *policy.Rule, dbv string, now time.Time,
	holds func(key string) bool) (BlobClaims, error) {
	var c BlobClaims
	var ask []blobRef
	var keys []string
	if !rule.Scans() {
		dbv = "" // as the gate keys verdicts of rules that do not scan
	}
	prefix := openKey(upstream, dgst, repo)
	err := s.meta.View(ctx, func(tx storage.Tx) error {
		err := tx.Scan(tableBlobRefs, prefix, false, func(key, val []byte) (bool, error) {
			var ref blobRef
			if json.Unmarshal(val, &ref) != nil || !ref.current(rule, dbv, now) {
				return true, nil
			}
			switch {
			case ref.Kind == refArtifact:
				c.Artifact = true
			case ref.Kind == refImage && ref.Plain:
				c.Image = true
				c.Opened = append(c.Opened, ref.DiffID)
			case ref.Kind == refImage:
				ask = append(ask, ref)
				keys = append(keys, VerdictKey(string(key[len(prefix):]), upstream, repo, rule.Hash, dbv))
			}
			return true, nil
		})
		if err != nil {
			return err
		}
		return tx.Scan(tableBlobRefs, denyPrefix(upstream, dgst), false, func(_, val []byte) (bool, error) {
			var ref blobRef
			if json.Unmarshal(val, &ref) == nil {
				c.Denied = append(c.Denied, ref.DiffID)
			}
			return true, nil
		})
	})
	if err != nil {
		return c, err
	}
	for i, ref := range ask {
		if holds(keys[i]) {
			c.Image = true
			c.Opened = append(c.Opened, ref.DiffID)
		}
	}
	return c, nil
}

// current reports whether an opening reference was made under rule, the
// one that now governs its repository, for rules that scan under the
// current DB dbv, and whether what its verdict relied on is still valid
// at now.
func (ref *blobRef) current(rule *policy.Rule, dbv string, now time.Time) bool {
	if ref.Rule != rule.Hash || (!ref.Until.IsZero() && !now.Before(ref.Until)) {
		return false
	}
	return ref.Kind == refArtifact || !rule.Scans() || ref.DB == dbv
}
