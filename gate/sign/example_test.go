package sign_test

import (
	"context"
	"fmt"
	"net/http"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/gate/sign"
)

// The gate verifies a platform manifest, accepting a signature of the
// index that listed it, and denies when the rule requires a signature.
func ExampleVerifier_Verify() {
	v := sign.New(sign.Options{Transport: http.DefaultTransport}) // gatehouse passes its upstream transport
	policy := &sign.Policy{
		Required:            true,
		Identities:          []sign.Identity{{PublicKeyPEM: []byte("-----BEGIN PUBLIC KEY-----\n...")}},
		AllowIndexSignature: true,
	}
	if err := policy.Validate(); err != nil { // at configuration time
		fmt.Println("invalid rule:", err)
		return
	}
	repo, _ := name.NewRepository("registry-1.docker.io/library/nginx")
	platform, _ := v1.NewHash("sha256:...")
	index, _ := v1.NewHash("sha256:...")
	res, err := v.Verify(context.Background(), repo, platform, policy, &index)
	switch {
	case err != nil: // fetch error, invalid policy: deny, do not store as final
		fmt.Println("denied:", res.Reason)
	case !res.Verified && policy.Required:
		fmt.Println("denied:", res.Reason)
	default:
		fmt.Println("signed by", res.Identity, "in", res.Format, "format")
	}
}
