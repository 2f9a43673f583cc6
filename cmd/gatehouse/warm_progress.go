package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// progress shows the warming of one image: on a terminal one line,
// redrawn (bytes done of the total); otherwise one line per event.
type progress struct {
	w      io.Writer
	image  string
	tty    bool
	status string
	done   int64 // blob bytes received
	total  int64 // blob bytes of the manifests seen so far
	drawn  time.Time
	blobs  int
}

func newProgress(w io.Writer, image string) *progress {
	p := &progress{w: w, image: image, tty: isTerminal(w), status: "pulling manifest"}
	p.draw(true)
	return p
}

// Write counts blob bytes received.
func (p *progress) Write(b []byte) (int, error) {
	p.done += int64(len(b))
	p.draw(false)
	return len(b), nil
}

// event reports a step: a line of its own off a terminal, the status of
// the live line on one.
func (p *progress) event(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if strings.HasPrefix(msg, "blob ") {
		p.blobs++
	}
	if !p.tty {
		fmt.Fprintf(p.w, "%s: %s\n", p.image, msg)
		return
	}
	p.status = msg
	p.draw(true)
}

// waiting is where the remote client reports a 503 (scanning; asking
// again): shown as an event.
func (p *progress) waiting() io.Writer { return waitWriter{p} }

type waitWriter struct{ p *progress }

func (w waitWriter) Write(b []byte) (int, error) {
	msg := strings.TrimSpace(string(b))
	msg = strings.TrimPrefix(msg, "gatehouse check: ")
	w.p.event("%s", msg)
	return len(b), nil
}

// finish ends the image's line: admitted, everything read.
func (p *progress) finish() {
	p.end(fmt.Sprintf("admitted and cached: %d blobs, %s", p.blobs, humanBytes(p.done)))
}

// denied ends the image's line with gatehouse's reason.
func (p *progress) denied(reason string) { p.end("DENIED: " + reason) }

// fail ends the image's line with the error.
func (p *progress) fail(err error) { p.end("failed: " + err.Error()) }

func (p *progress) end(msg string) {
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s  %s\n", p.image, msg)
		return
	}
	fmt.Fprintf(p.w, "%s: %s\n", p.image, msg)
}

// draw redraws the live line (at most ten times a second unless forced).
func (p *progress) draw(force bool) {
	if !p.tty || !force && time.Since(p.drawn) < 100*time.Millisecond {
		return
	}
	p.drawn = time.Now()
	fmt.Fprintf(p.w, "\r\033[K%s  %s  %s / %s", p.image, p.status, humanBytes(p.done), humanBytes(p.total))
}

// isTerminal reports whether w is a terminal (a character device).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
