package main

import (
	"slices"
	"testing"
)

// A perf call chain is put in the part of the work its system call or Go
// function shows; the rotation of clients and targets starts each round
// one further.
func TestClassifyAndRotate(t *testing.T) {
	text := []byte(`	ffffffff81aa0000 copy_user_generic+0x10
	ffffffff81bb0000 tcp_recvmsg+0x20
	ffffffff81cc0000 ksys_read+0x6f
	          0a1000 [unknown]

	          0b2000 [unknown]
	          0a1000 [unknown]

	ffffffff81aa0000 copy_page_from_iter+0x10
	ffffffff81dd0000 ksys_pwrite64+0x6f

	ffffffff81ee0000 schedule+0x10
`)
	syms := &symbols{addrs: []uint64{0x4a0000, 0x4b0000, 0x4c0000}, names: []string{"main.main", "crypto/internal/fips140/sha256.blockAMD64", "runtime.memmove"}, base: 0x400000}
	var got []string
	for _, f := range splitSamples(text) {
		got = append(got, classify(f, syms))
	}
	if want := []string{"read", "hash", "write", "kernel"}; !slices.Equal(got, want) {
		t.Fatalf("parts %v, want %v", got, want)
	}
	if got := rotate([]int{1, 2, 3}, 4); !slices.Equal(got, []int{2, 3, 1}) {
		t.Fatalf("rotate: %v", got)
	}
}
