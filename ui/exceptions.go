package ui

import (
	"net/http"

	"github.com/gatehouse/gatehouse/api"
	"github.com/gatehouse/gatehouse/gate/policy"
)

// exceptionsPage is what the Exceptions page shows.
type exceptionsPage struct {
	Configured bool
	List       []policy.ExceptionStatus
	Counts     map[string]int // by state
}

// exceptions serves the Exceptions page: every loaded exception (from
// gate.exceptions) with its owner, reason, scope, expiry and state.
func (h *Handler) exceptions(w http.ResponseWriter, r *http.Request) {
	var d exceptionsPage
	if l, ok := h.opts.Source.(api.ExceptionLister); ok {
		d.List = l.Exceptions()
		d.Configured = d.List != nil
	}
	d.Counts = map[string]int{}
	for _, e := range d.List {
		d.Counts[e.State]++
	}
	h.render(w, http.StatusOK, "exceptions", page{Title: "Exceptions", Nav: "exceptions", Data: d})
}
