//go:build !linux

package proxy

import "net"

func setCork(*net.TCPConn, bool) bool { return false }
