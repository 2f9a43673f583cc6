// Package sign verifies cosign signatures of images for the gate: legacy
// signature tags (sha256-<hex>.sig) and OCI 1.1 referrers carrying sigstore
// bundles, signed with a trusted public key or keylessly by a trusted OIDC
// identity certified by a CA of an offline trusted root. Nothing is fetched
// from Fulcio, Rekor or TUF; signatures are fetched from the upstream
// through the transport the caller provides.
//
// Verification is cosign's own (cosign.VerifyImageSignature with
// cosign.SimpleClaimVerifier for legacy signatures, cosign.VerifyNewBundle
// for bundles); this package chooses the options, checks the bundle's
// predicate type, and turns the outcome into a Result with a reason.
package sign
