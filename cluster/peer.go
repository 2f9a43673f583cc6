package cluster

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/gatehouse/gatehouse/cache"
	"github.com/gatehouse/gatehouse/metrics"
	"github.com/gatehouse/gatehouse/storage"
)

// The peer listener serves one route: GET /peer/v1/blobs/sha256:<hex>,
// the blob as this replica has it (committed, or its fetch in flight, the
// bytes sent as they arrive). It never starts a fetch.
const blobPath = "/peer/v1/blobs/"

// authHeader carries "<unix time>:<hex HMAC-SHA256(secret, method path time)>":
// the secret itself never crosses the network, and a captured header is
// good for maxSkew only.
const (
	authHeader = "X-Gatehouse-Peer-Auth"
	maxSkew    = 5 * time.Minute
)

// PeerStore is what the peer listener serves from (cache.Store).
type PeerStore interface {
	PeerStream(dgst v1.Hash) (*cache.Stream, error)
}

// Handler returns the peer listener's handler over store.
func (n *Node) Handler(store PeerStore) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+blobPath+"{digest}", func(w http.ResponseWriter, r *http.Request) {
		if !n.authorized(r) {
			metrics.PeerRequests.WithLabelValues("unauthorized").Inc()
			http.Error(w, "peer request not authenticated", http.StatusUnauthorized)
			return
		}
		dgst, err := v1.NewHash(r.PathValue("digest"))
		if err != nil {
			http.Error(w, "bad digest", http.StatusBadRequest)
			return
		}
		n.serveBlob(w, r, store, dgst)
	})
	return mux
}

func (n *Node) serveBlob(w http.ResponseWriter, r *http.Request, store PeerStore, dgst v1.Hash) {
	st, err := store.PeerStream(dgst)
	if errors.Is(err, cache.ErrNotFound) {
		metrics.PeerRequests.WithLabelValues("not_found").Inc()
		http.Error(w, "not here", http.StatusNotFound)
		return
	}
	if err == nil {
		defer st.Close()
		err = st.Wait(r.Context())
	}
	if err != nil {
		metrics.PeerRequests.WithLabelValues("error").Inc()
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	size := st.Size()
	if size >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	flush := func() { rc.Flush() }
	if size >= 0 {
		_, err = st.Send(r.Context(), w, 0, size, flush)
	} else {
		_, err = io.Copy(w, st.Reader(r.Context(), 0, flush))
	}
	if err != nil {
		// The fetch failed, or the peer went away: break the transfer,
		// so that the peer sees an error, never a short blob.
		metrics.PeerRequests.WithLabelValues("error").Inc()
		panic(http.ErrAbortHandler)
	}
	metrics.PeerRequests.WithLabelValues("ok").Inc()
}

// peerSource streams dgst from the holder of the lease l.
func (n *Node) peerSource(l storage.Lease, dgst v1.Hash) cache.Source {
	return func(ctx context.Context, off int64) (io.ReadCloser, int64, int64, error) {
		if !strings.HasPrefix(l.Addr, "http://") && !strings.HasPrefix(l.Addr, "https://") {
			return nil, 0, 0, fmt.Errorf("%w: %s advertises %q, not an http(s) URL", cache.ErrPeerGone, l.Holder, l.Addr)
		}
		url := strings.TrimSuffix(l.Addr, "/") + blobPath + dgst.String()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return nil, 0, 0, fmt.Errorf("%w: %s: %w", cache.ErrPeerGone, l.Holder, err)
		}
		n.sign(req)
		if off > 0 {
			req.Header.Set("Range", fmt.Sprintf("bytes=%d-", off))
		}
		resp, err := n.client.Do(req)
		if err != nil {
			return nil, 0, 0, fmt.Errorf("%w: %s at %s: %w", cache.ErrPeerGone, l.Holder, l.Addr, err)
		}
		if resp.StatusCode != http.StatusOK {
			msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			resp.Body.Close()
			// A holder without the blob (its fetch failed or ended) or one
			// that refuses us: claim the fetch again once its lease lapses.
			return nil, 0, 0, fmt.Errorf("%w: %s answered %s: %s", cache.ErrPeerGone, l.Holder, resp.Status, strings.TrimSpace(string(msg)))
		}
		return resp.Body, 0, resp.ContentLength, nil
	}
}

// sign adds the authentication header to a peer request.
func (n *Node) sign(req *http.Request) {
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	req.Header.Set(authHeader, ts+":"+n.mac(req.Method, req.URL.Path, ts))
}

func (n *Node) mac(method, path, ts string) string {
	m := hmac.New(sha256.New, n.secret)
	fmt.Fprintf(m, "%s %s %s", method, path, ts)
	return hex.EncodeToString(m.Sum(nil))
}

// authorized checks a peer request's header.
func (n *Node) authorized(r *http.Request) bool {
	ts, sum, ok := strings.Cut(r.Header.Get(authHeader), ":")
	if !ok {
		return false
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return false
	}
	if d := time.Since(time.Unix(sec, 0)); d > maxSkew || d < -maxSkew {
		return false
	}
	return hmac.Equal([]byte(sum), []byte(n.mac(r.Method, r.URL.Path, ts)))
}

// peerClient is the client of peer requests: quick to notice a replica
// that is gone (dial and response-header timeouts of a few seconds), no
// limit on a body that streams a large blob.
func peerClient(ttl time.Duration) *http.Client {
	d := &net.Dialer{Timeout: 3 * time.Second, KeepAlive: 15 * time.Second}
	return &http.Client{Transport: &http.Transport{
		DialContext:           d.DialContext,
		ResponseHeaderTimeout: ttl + 5*time.Second, // the holder may wait for upstream's headers
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       time.Minute,
		ForceAttemptHTTP2:     false,
	}}
}
