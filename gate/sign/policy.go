package sign

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"

	"github.com/sigstore/cosign/v2/pkg/cosign"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
)

// Identity is one trusted signer: either a public key or a keyless
// (Fulcio-certified) OIDC identity, never both.
//
// For a keyless identity, the issuer and the subject must each be given,
// exactly (Issuer, Subject) or as a regular expression (IssuerRegexp,
// SubjectRegexp), but not both ways. Regular expressions use Go syntax and,
// as in cosign's --certificate-identity-regexp, are not anchored: write
// ^...$ to match the whole value.
type Identity struct {
	// PublicKeyPEM is a PEM-encoded public key (ECDSA, RSA or Ed25519), as
	// written by `cosign generate-key-pair`; the caller reads key files.
	PublicKeyPEM []byte `json:"publicKeyPEM,omitempty"`
	// Issuer is the exact OIDC issuer recorded in the certificate.
	Issuer string `json:"issuer,omitempty"`
	// Subject is the exact subject alternative name of the certificate
	// (an email address or a URI, e.g. a CI workflow).
	Subject       string `json:"subject,omitempty"`
	IssuerRegexp  string `json:"issuerRegexp,omitempty"`
	SubjectRegexp string `json:"subjectRegexp,omitempty"`
}

// keyless reports whether any keyless field is set.
func (id *Identity) keyless() bool {
	return id.Issuer != "" || id.Subject != "" || id.IssuerRegexp != "" || id.SubjectRegexp != ""
}

// Policy is the signature part of a gate rule. The zero value is invalid:
// at least one identity is needed.
type Policy struct {
	// Required makes a missing or invalid signature a denial. Verify does
	// not look at it (it reports what it found); the caller decides.
	Required bool `json:"required"`
	// Identities are the trusted signers; a valid signature by any of
	// them verifies the image.
	Identities []Identity `json:"identities"`
	// TrustedRoot is the content of a sigstore trusted_root.json: the
	// Fulcio CAs, Rekor logs and CT logs to trust. Verification is
	// offline: nothing is fetched from Fulcio, Rekor or TUF. Needed by
	// keyless identities and by RequireTlog / RequireSCT.
	TrustedRoot []byte `json:"trustedRoot,omitempty"`
	// RequireTlog requires every accepted signature to carry a
	// transparency-log entry (a Rekor bundle or inclusion proof) signed by
	// a log of TrustedRoot. When false, an entry is still used when
	// present and verifiable (it dates a keyless certificate, which is
	// otherwise checked against the current time).
	RequireTlog bool `json:"requireTlog,omitempty"`
	// RequireSCT requires keyless certificates to embed a signed
	// certificate timestamp from a CT log of TrustedRoot. Key-based
	// signatures have no certificate and are not affected.
	RequireSCT bool `json:"requireSCT,omitempty"`
	// AllowIndexSignature accepts a platform manifest when the image
	// index listing it carries a valid signature (the caller passes the
	// index digest to Verify).
	AllowIndexSignature bool `json:"allowIndexSignature,omitempty"`
}

// Validate checks the policy the way Verify will use it: keys parse, the
// trusted root parses, regular expressions compile, and every requirement
// can be met. Errors name the identity by its index.
func (p *Policy) Validate() error {
	_, err := p.compile()
	return err
}

// keyIdentity is a parsed trusted key.
type keyIdentity struct {
	verifier    signature.Verifier
	fingerprint string // "sha256:<hex>" of the DER SubjectPublicKeyInfo
}

// compiled is a policy parsed for verification.
type compiled struct {
	keys    []keyIdentity
	keyless []cosign.Identity
	// tm is the trusted root; nil when the policy has none.
	tm          root.TrustedMaterial
	rekor       bool // tm has at least one Rekor log
	tsa         bool // tm has at least one timestamping authority
	requireTlog bool
	requireSCT  bool
}

func (p *Policy) compile() (*compiled, error) {
	if p == nil {
		return nil, errors.New("no signature policy")
	}
	if len(p.Identities) == 0 {
		return nil, errors.New("identities: at least one trusted identity is required")
	}
	c := &compiled{requireTlog: p.RequireTlog, requireSCT: p.RequireSCT}
	if len(p.TrustedRoot) > 0 {
		tr, err := root.NewTrustedRootFromJSON(p.TrustedRoot)
		if err != nil {
			return nil, fmt.Errorf("trustedRoot: %w", err)
		}
		c.tm = tr
		c.rekor = len(tr.RekorLogs()) > 0
		c.tsa = len(tr.TimestampingAuthorities()) > 0
		if p.RequireSCT && len(tr.CTLogs()) == 0 && hasKeyless(p.Identities) {
			return nil, errors.New("requireSCT: the trusted root has no CT log")
		}
	}
	for i := range p.Identities {
		id := &p.Identities[i]
		switch {
		case len(id.PublicKeyPEM) > 0 && id.keyless():
			return nil, fmt.Errorf("identities[%d]: a public key and a keyless identity are exclusive", i)
		case len(id.PublicKeyPEM) > 0:
			k, err := parseKey(id.PublicKeyPEM)
			if err != nil {
				return nil, fmt.Errorf("identities[%d]: publicKey: %w", i, err)
			}
			c.keys = append(c.keys, k)
		case id.keyless():
			if err := checkMatcher("issuer", id.Issuer, id.IssuerRegexp); err != nil {
				return nil, fmt.Errorf("identities[%d]: %w", i, err)
			}
			if err := checkMatcher("subject", id.Subject, id.SubjectRegexp); err != nil {
				return nil, fmt.Errorf("identities[%d]: %w", i, err)
			}
			if c.tm == nil {
				return nil, fmt.Errorf("identities[%d]: a keyless identity needs a trusted root", i)
			}
			if len(c.tm.FulcioCertificateAuthorities()) == 0 {
				return nil, fmt.Errorf("identities[%d]: the trusted root has no certificate authority for keyless signatures", i)
			}
			c.keyless = append(c.keyless, cosign.Identity{
				Issuer: id.Issuer, Subject: id.Subject,
				IssuerRegExp: id.IssuerRegexp, SubjectRegExp: id.SubjectRegexp,
			})
		default:
			return nil, fmt.Errorf("identities[%d]: neither a public key nor an issuer and subject", i)
		}
	}
	if p.RequireTlog && !c.rekor {
		return nil, errors.New("requireTlog: needs a trusted root with a Rekor log")
	}
	return c, nil
}

func hasKeyless(ids []Identity) bool {
	for i := range ids {
		if ids[i].keyless() {
			return true
		}
	}
	return false
}

// checkMatcher requires exactly one of an exact value and a regexp: an
// empty matcher would accept any certificate the CA ever issued.
func checkMatcher(field, exact, re string) error {
	switch {
	case exact != "" && re != "":
		return fmt.Errorf("%s: give an exact value or a regexp, not both", field)
	case exact == "" && re == "":
		return fmt.Errorf("%s: required for a keyless identity", field)
	case re != "":
		if _, err := regexp.Compile(re); err != nil {
			return fmt.Errorf("%sRegexp: %w", field, err)
		}
	}
	return nil
}

// parseKey loads a PEM public key the way cosign's --key does (SHA-256).
func parseKey(pemBytes []byte) (keyIdentity, error) {
	pub, err := cryptoutils.UnmarshalPEMToPublicKey(pemBytes)
	if err != nil {
		return keyIdentity{}, err
	}
	v, err := signature.LoadVerifier(pub, crypto.SHA256)
	if err != nil {
		return keyIdentity{}, err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return keyIdentity{}, err
	}
	sum := sha256.Sum256(der)
	return keyIdentity{verifier: v, fingerprint: "sha256:" + hex.EncodeToString(sum[:])}, nil
}
