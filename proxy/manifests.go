package proxy

import (
	"errors"
	"net/http"
	"strconv"

	"github.com/gatehouse/gatehouse/gate"
	"github.com/gatehouse/gatehouse/metrics"
	"github.com/gatehouse/gatehouse/pull"
)

// serveManifest resolves the manifest through the content layer, asks the
// gate, and writes the bytes exactly as upstream sent them.
func (h *Handler) serveManifest(w http.ResponseWriter, r *http.Request, rt *Route) *Error {
	m, err := h.content.Manifest(r.Context(), rt.Upstream.Name, rt.Repo, rt.Ref)
	if err != nil {
		return asError(err, CodeManifestUnknown)
	}
	if err := h.judge(r, rt, m); err != nil {
		return err
	}
	hd := w.Header()
	hd.Set("Content-Type", string(m.MediaType))
	hd.Set("Docker-Content-Digest", m.Digest.String())
	hd.Set("Content-Length", strconv.Itoa(len(m.Data)))
	hd.Set("Etag", `"`+m.Digest.String()+`"`)
	if m.Stale {
		// RFC 9111 §5.5: the mapping could not be revalidated upstream.
		hd.Set("Warning", `110 gatehouse "Response is Stale"`)
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodGet {
		w.Write(m.Data)
	}
	return nil
}

// judge asks the gate about a manifest about to be served: nil to serve
// it, else the refusal (403 with the reasons, or a retryable 503).
func (h *Handler) judge(r *http.Request, rt *Route, m *pull.Manifest) *Error {
	if h.gate == nil {
		return nil
	}
	tag := ""
	if !rt.ByDigest {
		tag = rt.Ref
	}
	v, err := h.gate.Check(r.Context(), gate.Subject{Upstream: rt.Upstream.Name, Repo: rt.Repo, Tag: tag,
		Digest: m.Digest, MediaType: m.MediaType, Manifest: m.Data, Client: r.RemoteAddr, Pull: r.Method == http.MethodGet})
	if err != nil {
		result := "error"
		var p *gate.Pending
		if errors.As(err, &p) {
			result = "pending"
		}
		metrics.GateDecisions.WithLabelValues(result, result, "").Inc()
		return gateError(err)
	}
	if !v.Admitted {
		metrics.GateDecisions.WithLabelValues("denied", v.Reason, v.Rule).Inc()
		return denied(v)
	}
	if v.Kind != "index" {
		metrics.GateDecisions.WithLabelValues("admitted", v.Reason, v.Rule).Inc()
	}
	return nil
}
