package access

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/crypto/bcrypt"
)

// minTokenLen is the shortest bearer token accepted in a tokens file.
const minTokenLen = 16

// htpasswd maps user names to bcrypt hashes.
type htpasswd map[string][]byte

// loadHtpasswd reads an htpasswd file. Only bcrypt hashes are accepted:
// the other formats of htpasswd (MD5-crypt, SHA-1, crypt, plain text) are
// weak, and a line in them is refused with its number.
func loadHtpasswd(path string) (htpasswd, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	users := htpasswd{}
	err = eachLine(data, func(n int, line string) error {
		user, hash, ok := strings.Cut(line, ":")
		if !ok || user == "" {
			return fmt.Errorf("%s line %d: not user:hash", path, n)
		}
		if !strings.HasPrefix(hash, "$2a$") && !strings.HasPrefix(hash, "$2b$") && !strings.HasPrefix(hash, "$2y$") {
			return fmt.Errorf("%s line %d: user %q: only bcrypt hashes are accepted (create the file with htpasswd -B)", path, n, user)
		}
		if _, err := bcrypt.Cost([]byte(hash)); err != nil {
			return fmt.Errorf("%s line %d: user %q: bad bcrypt hash: %v", path, n, user, err)
		}
		if _, dup := users[user]; dup {
			return fmt.Errorf("%s line %d: user %q appears twice", path, n, user)
		}
		users[user] = []byte(hash)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(users) == 0 {
		return nil, fmt.Errorf("%s: no users", path)
	}
	return users, nil
}

// tokenSet holds bearer tokens by their SHA-256 (the tokens themselves are
// not kept) with the names the access log shows.
type tokenSet []token

type token struct {
	name string
	sum  [sha256.Size]byte
}

// loadTokens reads a tokens file: "name token" or a bare "token" per line.
func loadTokens(path string) (tokenSet, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var set tokenSet
	seen := map[[sha256.Size]byte]bool{}
	err = eachLine(data, func(n int, line string) error {
		f := strings.Fields(line)
		var t token
		switch len(f) {
		case 1:
			t.name = fmt.Sprintf("token-line-%d", n)
		case 2:
			t.name = f[0]
		default:
			return fmt.Errorf("%s line %d: want \"name token\" or a bare token", path, n)
		}
		secret := f[len(f)-1]
		if len(secret) < minTokenLen {
			return fmt.Errorf("%s line %d (%s): token shorter than %d characters", path, n, t.name, minTokenLen)
		}
		t.sum = sha256.Sum256([]byte(secret))
		if seen[t.sum] {
			return fmt.Errorf("%s line %d (%s): token appears twice", path, n, t.name)
		}
		seen[t.sum] = true
		set = append(set, t)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(set) == 0 {
		return nil, fmt.Errorf("%s: no tokens", path)
	}
	return set, nil
}

// match returns the name of the token equal to secret. Every token is
// compared, in constant time, whether or not one matched before: the time
// taken says nothing about which token, or how much of one, was right.
func (s tokenSet) match(secret string) (string, bool) {
	sum := sha256.Sum256([]byte(secret))
	name, found := "", 0
	for _, t := range s {
		if subtle.ConstantTimeCompare(sum[:], t.sum[:]) == 1 {
			name, found = t.name, 1
		}
	}
	return name, found == 1
}

// eachLine calls f with every line that is neither blank nor a # comment,
// trimmed, numbered from 1.
func eachLine(data []byte, f func(n int, line string) error) error {
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if err := f(n, line); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return errors.New("line too long")
	}
	return nil
}

// maxVerified bounds the memory of successful bcrypt checks.
const maxVerified = 4096

// bcryptSlots bounds the bcrypt comparisons running at once to half the
// CPUs: a flood of wrong passwords (each tens of milliseconds of CPU) then
// waits its turn instead of starving the pulls being served. Remembered
// credentials never need a slot.
var bcryptSlots = make(chan struct{}, max(1, runtime.GOMAXPROCS(0)/2))

// bcryptCompare is bcrypt's comparison; tests replace it to watch how many
// run at once.
var bcryptCompare = bcrypt.CompareHashAndPassword

// compareInSlot compares password with hash in a bcrypt slot. Every bcrypt
// comparison goes through it: a wrong password, and the dummy compared
// against for an unknown user, alike.
func compareInSlot(hash []byte, password string) error {
	bcryptSlots <- struct{}{}
	defer func() { <-bcryptSlots }()
	return bcryptCompare(hash, []byte(password))
}

// verifiedCache remembers user/password/hash triples that passed bcrypt.
// bcrypt is slow by design (tens of milliseconds), and containerd sends
// basic credentials with every request of a pull: without this, a burst
// of pulls would queue behind the hashing. Only a SHA-256 over the triple
// is kept, in memory; a changed hash in the htpasswd file never matches an
// old entry.
type verifiedCache struct {
	mu sync.Mutex
	ok map[[sha256.Size]byte]struct{}
}

func (c *verifiedCache) check(user, password string, hash []byte) bool {
	h := sha256.New()
	for _, part := range [][]byte{[]byte(user), []byte(password), hash} {
		fmt.Fprintf(h, "%d:", len(part))
		h.Write(part)
	}
	var key [sha256.Size]byte
	h.Sum(key[:0])
	c.mu.Lock()
	_, hit := c.ok[key]
	c.mu.Unlock()
	if hit {
		return true
	}
	if err := compareInSlot(hash, password); err != nil {
		return false
	}
	c.mu.Lock()
	if c.ok == nil || len(c.ok) >= maxVerified {
		c.ok = map[[sha256.Size]byte]struct{}{}
	}
	c.ok[key] = struct{}{}
	c.mu.Unlock()
	return true
}
