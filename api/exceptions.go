package api

import (
	"net/http"

	"github.com/gatehouse/gatehouse/gate/policy"
)

// ExceptionLister is a read model with scoped exceptions (gate.exceptions);
// *gate.Gate is one.
type ExceptionLister interface {
	// Exceptions lists the loaded exceptions with their state now; nil
	// when none are configured.
	Exceptions() []policy.ExceptionStatus
}

// exceptions serves GET /api/v1/exceptions: every loaded exception, in
// the order of its files, with its state (active, expiring within
// gate.exceptions.warnBefore, or expired: never applied), owner, reason,
// scope, expiry and source file.
func (h *Handler) exceptions(w http.ResponseWriter, r *http.Request) {
	list := []policy.ExceptionStatus{}
	if l, ok := h.opts.Model.(ExceptionLister); ok {
		if got := l.Exceptions(); got != nil {
			list = got
		}
	}
	cfg := h.opts.Config.Exceptions
	writeJSON(w, map[string]any{"exceptions": list, "path": cfg.Path, "warnBefore": cfg.WarnBefore.D().String()})
}
