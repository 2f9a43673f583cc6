package api

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/gatehouse/gatehouse/config"
)

// PolicyTester judges the images on record under a proposed
// configuration, downloading and storing nothing, and returns the result
// to encode: a *gate.DryRunResult from the gate's DryRun, with the
// proposal's VEX statements, in production. (Typed loosely because gate's
// tests import this package.)
type PolicyTester func(ctx context.Context, proposed *config.Config) (any, error)

// MaxPolicyTestBody bounds the proposed configuration of POST
// /api/v1/policy/test.
const MaxPolicyTestBody = 1 << 20

// policyTest serves POST /api/v1/policy/test: the body is a configuration
// file (YAML, or JSON) whose gate section is validated as at start-up (a
// mistake answers 400 naming the field) in place of the server's own; it
// may name only files the server already reads (config.ParseGateProposal),
// and the answer is the dry run. One runs at a time: a dry run
// reads every image on record, and may detect each again with a new DB.
func (h *Handler) policyTest(w http.ResponseWriter, r *http.Request) {
	if h.opts.PolicyTest == nil || h.opts.Running == nil {
		writeError(w, http.StatusNotImplemented, "policy test is not available on this server")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxPolicyTestBody))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeError(w, http.StatusRequestEntityTooLarge, "the proposed configuration is larger than 1 MiB")
		return
	case err != nil:
		writeError(w, http.StatusBadRequest, "reading the proposed configuration: "+err.Error())
		return
	case len(strings.TrimSpace(string(body))) == 0:
		writeError(w, http.StatusBadRequest, "the body must be the proposed configuration (YAML or JSON)")
		return
	}
	proposed, err := config.ParseGateProposal(body, h.opts.Running)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	select {
	case h.testing <- struct{}{}:
		defer func() { <-h.testing }()
	default:
		w.Header().Set("Retry-After", "10")
		writeError(w, http.StatusTooManyRequests, "another policy test is running; try again shortly")
		return
	}
	res, err := h.opts.PolicyTest(r.Context(), proposed)
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, res)
}
