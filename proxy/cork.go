package proxy

import (
	"context"
	"net"
)

type connKey struct{}

// ConnContext is an http.Server ConnContext that lets the handler reach the
// client's TCP connection, to send a blob file in full segments (see cork).
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*net.TCPConn); ok {
		return context.WithValue(ctx, connKey{}, tc)
	}
	return ctx
}

// corked holds back partial TCP segments of the request's connection while
// a blob file is sent with sendfile, as nginx's tcp_nopush does: headers and
// body leave in full segments. The returned func sends what is left; call
// it when the body is written. Without a TCP connection (TLS, tests) it
// does nothing.
func corked(ctx context.Context) func() {
	tc, _ := ctx.Value(connKey{}).(*net.TCPConn)
	if tc == nil || !setCork(tc, true) {
		return func() {}
	}
	return func() { setCork(tc, false) }
}
