package config

import (
	"fmt"
	"io"
	"os"
	"strings"
)

// Signatures is the signature part of a rule.
type Signatures struct {
	// Required denies an image without a valid signature by a trusted
	// identity. When false, the result is recorded but does not deny.
	Required bool `yaml:"required"`
	// Identities are the trusted signers: each a public key or a keyless
	// identity (OIDC issuer and certificate subject, exact or regexp).
	Identities []Signer `yaml:"identities"`
	// TrustedRoot is a sigstore trusted_root.json file (Fulcio CAs, Rekor
	// and CT logs), read at start-up; verification never goes online.
	// Required for keyless identities and for requireTlog / requireSCT.
	TrustedRoot string `yaml:"trustedRoot"`
	// RequireTlog requires transparency-log evidence in the signature.
	RequireTlog bool `yaml:"requireTlog"`
	// RequireSCT requires keyless certificates to carry an SCT.
	RequireSCT bool `yaml:"requireSCT"`
	// AllowIndexSignature accepts a platform manifest when the index that
	// lists it is signed. Default true.
	AllowIndexSignature *bool `yaml:"allowIndexSignature"`

	root []byte // TrustedRoot's content, read when the config was loaded
}

// Signer is one trusted identity.
type Signer struct {
	// PublicKey is a PEM public key, inline or as a file path.
	PublicKey     string `yaml:"publicKey"`
	Issuer        string `yaml:"issuer"`
	Subject       string `yaml:"subject"`
	IssuerRegexp  string `yaml:"issuerRegexp"`
	SubjectRegexp string `yaml:"subjectRegexp"`

	// pem is the key as read when the configuration was loaded: the
	// verifier and the rule hash both use these bytes, so a key file
	// replaced while gatehouse runs changes neither until a restart.
	pem []byte
}

// maxPublicKeyFile bounds a public key file: a PEM public key is well
// under a kilobyte, so anything near this is the wrong file (or a device).
const maxPublicKeyFile = 64 << 10

// PublicKeyPEM returns the key's PEM, reading the file when PublicKey is
// a path.
func (s *Signer) PublicKeyPEM() ([]byte, error) {
	if s.PublicKey == "" {
		return nil, nil
	}
	if s.pem != nil {
		return s.pem, nil
	}
	if strings.HasPrefix(strings.TrimSpace(s.PublicKey), "-----BEGIN") {
		return []byte(s.PublicKey), nil
	}
	return readBounded(s.PublicKey, maxPublicKeyFile, "KiB: not a PEM public key")
}

// readBounded reads a file of at most max bytes; a bigger one is an error
// saying so in unit (KiB or MiB) and what it cannot be.
func readBounded(path string, max int64, unitWhat string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		shift := 10
		if strings.HasPrefix(unitWhat, "MiB") {
			shift = 20
		}
		return nil, fmt.Errorf("%s is larger than %d %s", path, max>>shift, unitWhat)
	}
	return b, nil
}

func (s *Signatures) finish(field string) []error {
	var errs []error
	bad := func(sub, format string, args ...any) {
		errs = append(errs, fmt.Errorf("config: %s.%s: %s", field, sub, fmt.Sprintf(format, args...)))
	}
	if s.AllowIndexSignature == nil {
		t := true
		s.AllowIndexSignature = &t
	}
	if len(s.Identities) == 0 {
		bad("identities", "at least one trusted identity is required")
	}
	keyless := s.RequireTlog || s.RequireSCT
	for i, id := range s.Identities {
		f := fmt.Sprintf("identities[%d]", i)
		isKeyless := id.Issuer != "" || id.Subject != "" || id.IssuerRegexp != "" || id.SubjectRegexp != ""
		switch {
		case id.PublicKey != "" && isKeyless:
			bad(f, "set either publicKey or issuer/subject, not both")
		case id.PublicKey != "":
			pem, err := id.PublicKeyPEM()
			if err != nil {
				bad(f+".publicKey", "%v", err)
			}
			s.Identities[i].pem = pem
		case isKeyless:
			keyless = true
			if (id.Issuer == "") == (id.IssuerRegexp == "") {
				bad(f, "set exactly one of issuer and issuerRegexp")
			}
			if (id.Subject == "") == (id.SubjectRegexp == "") {
				bad(f, "set exactly one of subject and subjectRegexp")
			}
		default:
			bad(f, "set publicKey, or issuer and subject")
		}
	}
	if keyless && s.TrustedRoot == "" {
		bad("trustedRoot", "required for keyless identities and transparency-log or SCT requirements")
	}
	if s.TrustedRoot != "" {
		b, err := s.readTrustedRoot()
		if err != nil {
			bad("trustedRoot", "%v", err)
		}
		s.root = b
	}
	return errs
}

// maxTrustedRootFile bounds a trusted_root.json (the public-good one is
// about 10 KiB).
const maxTrustedRootFile = 4 << 20

// TrustedRootJSON returns the trusted root as read when the configuration
// was loaded (read now if it was not), or nil when none is set.
func (s *Signatures) TrustedRootJSON() ([]byte, error) {
	if s.TrustedRoot == "" || s.root != nil {
		return s.root, nil
	}
	return s.readTrustedRoot()
}

func (s *Signatures) readTrustedRoot() ([]byte, error) {
	return readBounded(s.TrustedRoot, maxTrustedRootFile, "MiB: not a trusted_root.json")
}
