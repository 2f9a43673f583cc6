package main

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"debug/gosym"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The per-part CPU profile of gatehouse's cold GET: one more cold GET (by
// the bench client, untimed, after the cold rounds) through a fresh
// gatehouse while `perf record -g` samples that process, each sample then
// put in the part of the work its call chain shows (see classify).

// perfFreq is the sampling frequency: each sample stands for 1/perfFreq
// seconds of CPU time.
const perfFreq = 997

// Parts of a cold GET, in report order.
var parts = []struct{ key, what string }{
	{"read", "socket read from the upstream (kernel: `tcp_recvmsg`)"},
	{"hash", "hashing (sha256 block functions)"},
	{"write", "writing the cache file (kernel: `write`/`pwrite` into the file system)"},
	{"fileread", "reading the cache file for the client (kernel: file `read`/`pread`)"},
	{"send", "sending to the client (kernel: `tcp_sendmsg`, `sendfile`, `splice`)"},
	{"gocopy", "copying in Go (`runtime.memmove`)"},
	{"runtime", "Go runtime: scheduler, garbage collector, allocation (`runtime.*`)"},
	{"kernel", "other kernel work (scheduling, wake-ups, interrupts, page faults)"},
	{"other", "other Go code"},
}

// partProfile is what perf counted for one cold GET.
type partProfile struct {
	Samples map[string]int // part -> samples
	Funcs   map[string]int // Go function (or kernel symbol of "kernel") -> samples, for the Go parts
	Total   int
	CPU     time.Duration // the process's CPU time over the GET (/proc), to check the samples against
	Wall    time.Duration
}

func (pp *partProfile) cpu(part string) time.Duration {
	return time.Duration(pp.Samples[part]) * time.Second / perfFreq
}

// top names the functions most of part's samples were in, as ": most in
// f (n%), g (m%)", or "" when the part is not broken down.
func (pp *partProfile) top(part string) string {
	type fn struct {
		name string
		n    int
	}
	var fns []fn
	for k, n := range pp.Funcs {
		if p, name, _ := strings.Cut(k, "\x00"); p == part {
			fns = append(fns, fn{orDash(name), n})
		}
	}
	if len(fns) == 0 {
		return ""
	}
	slices.SortFunc(fns, func(a, b fn) int { return b.n - a.n })
	var out []string
	for _, f := range fns[:min(3, len(fns))] {
		out = append(out, fmt.Sprintf("`%s` %.0f%%", f.name, 100*float64(f.n)/float64(pp.Total)))
	}
	return "; most in " + strings.Join(out, ", ")
}

// profileCold makes the profiled cold GET of gatehouse kind k.
func (b *bench) profileCold(ctx context.Context, k proxyKind) (*partProfile, error) {
	perf, err := exec.LookPath("perf")
	if err != nil {
		return nil, fmt.Errorf("perf not found (Debian package linux-perf): %w", err)
	}
	syms, err := loadSymbols(k.bin)
	if err != nil {
		return nil, err
	}
	s, err := b.startProxy(ctx, k, b.upstream.base)
	if err != nil {
		return nil, err
	}
	defer b.retire(s)
	if err := b.resolve(ctx, s.base); err != nil {
		return nil, err
	}
	out := filepath.Join(s.dir, "perf.data")
	rec := exec.Command(perf, "record", "-q", "-F", strconv.Itoa(perfFreq), "-g", "-p", strconv.Itoa(s.pid()), "-o", out)
	var stderr bytes.Buffer
	rec.Stderr = &stderr
	if err := rec.Start(); err != nil {
		return nil, err
	}
	time.Sleep(300 * time.Millisecond) // perf attaches to the process's threads
	run, cpu, gerr := b.coldGet(ctx, cBench, s)
	_ = rec.Process.Signal(syscall.SIGINT)
	werr := rec.Wait()
	if gerr != nil {
		return nil, gerr
	}
	// perf record writes its data on SIGINT and then dies of it.
	if ws, ok := rec.ProcessState.Sys().(syscall.WaitStatus); werr != nil && !(ok && ws.Signaled() && ws.Signal() == syscall.SIGINT) {
		return nil, fmt.Errorf("perf record: %v: %s", werr, strings.TrimSpace(stderr.String()))
	}
	script := exec.CommandContext(ctx, perf, "script", "-i", out, "-F", "ip,sym")
	text, err := script.Output()
	if err != nil {
		return nil, fmt.Errorf("perf script: %w", err)
	}
	pp := &partProfile{Samples: map[string]int{}, Funcs: map[string]int{}, CPU: cpu, Wall: run.wall}
	for _, frames := range splitSamples(text) {
		part := classify(frames, syms)
		pp.Samples[part]++
		pp.Total++
		switch part {
		case "runtime", "other":
			pp.Funcs[part+"\x00"+syms.lookup(frames[0].addr)]++
		case "kernel":
			pp.Funcs[part+"\x00"+frames[0].sym]++
		}
	}
	if pp.Total == 0 {
		return nil, fmt.Errorf("perf recorded no samples: %s", strings.TrimSpace(stderr.String()))
	}
	return pp, nil
}

// frame is one line of a sample's call chain: its address and, for the
// kernel, its symbol ("[unknown]" for the stripped Go binary).
type frame struct {
	addr uint64
	sym  string
}

// splitSamples parses `perf script -F ip,sym` output of a -g recording:
// one block of frames per sample, leaf first, blocks separated by blank
// lines.
func splitSamples(text []byte) [][]frame {
	var out [][]frame
	var cur []frame
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			if len(cur) > 0 {
				out = append(out, cur)
				cur = nil
			}
			continue
		}
		addr, err := strconv.ParseUint(f[0], 16, 64)
		if err != nil {
			continue
		}
		sym := ""
		if len(f) > 1 {
			sym, _, _ = strings.Cut(f[1], "+0x")
		}
		cur = append(cur, frame{addr, sym})
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// kernelParts map kernel functions in a call chain to parts; the first
// match from the leaf up wins.
var kernelParts = []struct{ part, fn string }{
	{"read", "tcp_recvmsg"},
	{"send", "tcp_sendmsg"},
	{"send", "do_sendfile"},
	{"send", "do_splice"},
	{"write", "ksys_write"},
	{"write", "ksys_pwrite64"},
	{"write", "vfs_write"},
	{"fileread", "ksys_read"},
	{"fileread", "ksys_pread64"},
	{"fileread", "vfs_read"},
}

// classify puts one sample in a part: by the system call its kernel call
// chain is in, else by the Go function it was sampled in.
func classify(frames []frame, syms *symbols) string {
	if len(frames) == 0 {
		return "other"
	}
	if isKernel(frames[0].addr) {
		for _, f := range frames {
			for _, kp := range kernelParts {
				if f.sym == kp.fn {
					return kp.part
				}
			}
		}
		return "kernel"
	}
	fn := syms.lookup(frames[0].addr)
	switch {
	case strings.Contains(fn, "sha256"):
		return "hash"
	case strings.HasPrefix(fn, "runtime.memmove"):
		return "gocopy"
	case strings.HasPrefix(fn, "runtime."), strings.HasPrefix(fn, "internal/runtime"):
		return "runtime"
	}
	return "other"
}

func isKernel(addr uint64) bool { return addr >= 0xffff800000000000 }

// symbols are the functions of a Go binary, from its pclntab (which a
// binary stripped with -s -w keeps: the runtime needs it), sorted by
// address.
type symbols struct {
	addrs []uint64
	names []string
	// base is the executable segment's address less its file offset:
	// perf prints the addresses of a binary it has no symbols for as
	// file offsets.
	base uint64
}

func loadSymbols(bin string) (*symbols, error) {
	ef, err := elf.Open(bin)
	if err != nil {
		return nil, err
	}
	defer ef.Close()
	pcln, text := ef.Section(".gopclntab"), ef.Section(".text")
	if pcln == nil || text == nil {
		return nil, fmt.Errorf("%s: no .gopclntab or .text section", bin)
	}
	data, err := pcln.Data()
	if err != nil {
		return nil, err
	}
	tab, err := gosym.NewTable(nil, gosym.NewLineTable(data, text.Addr))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", bin, err)
	}
	s := &symbols{}
	for _, fn := range tab.Funcs {
		s.addrs = append(s.addrs, fn.Entry)
		s.names = append(s.names, fn.Name)
	}
	if len(s.addrs) == 0 || !slices.IsSorted(s.addrs) {
		return nil, fmt.Errorf("%s: no sorted functions in the pclntab", bin)
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_LOAD && p.Flags&elf.PF_X != 0 {
			s.base = p.Vaddr - p.Off
			break
		}
	}
	return s, nil
}

// lookup returns the function containing addr, a file offset as perf
// prints it ("" when none).
func (s *symbols) lookup(addr uint64) string {
	addr += s.base // a file offset (see base)
	i := sort.Search(len(s.addrs), func(i int) bool { return s.addrs[i] > addr })
	if i == 0 {
		return ""
	}
	return s.names[i-1]
}

// writeParts writes the per-part table of gatehouse's cold GET.
func writeParts(p printer, r *results) {
	for _, t := range r.gatehouseTargets() {
		pp := r.Parts[t]
		if pp == nil {
			if e := r.PartsErr[t]; e != "" {
				p("\n**Where %s's CPU time goes in a cold GET**: not measured (%s).\n", label[t], oneLine(e))
			}
			continue
		}
		p("\n**Where %s's CPU time goes in a cold GET** (one more cold GET by the bench client through a fresh %s, after the rounds above, untimed: %s, %s of CPU by `/proc`). ", label[t], label[t], fmtDur(pp.Wall), fmtDur(pp.CPU))
		p("Method: `perf record -g -F %d -p <pid>` over the GET; each sample is put in the part of the work its call chain shows: ", perfFreq)
		p("for a sample in the kernel, the system call it is in (the first of `tcp_recvmsg`, `tcp_sendmsg`/`sendfile`/`splice`, a write, a read from the leaf up); ")
		p("for one in Go code, the function it is in (named from the binary's pclntab with Go's debug/gosym). Each sample stands for 1/%d s of CPU.\n\n", perfFreq)
		p("| part | CPU time | share |\n|---|---:|---:|\n")
		for _, part := range parts {
			if n := pp.Samples[part.key]; n > 0 {
				p("| %s%s | %s | %.0f%% |\n", part.what, pp.top(part.key), fmtDur(pp.cpu(part.key)), 100*float64(n)/float64(pp.Total))
			}
		}
		p("| **all samples** | **%s** | 100%% |\n", fmtDur(time.Duration(pp.Total)*time.Second/perfFreq))
	}
}
