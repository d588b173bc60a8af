// Package leakcheck finds goroutines a test binary left running.
//
// A test binary takes a [Snapshot] before its tests run and calls [Snapshot.Check] after them: every goroutine
// that did not exist at the snapshot, is not one of the runtime's own and is not ignored by the caller must have
// ended within the grace period, otherwise Check returns an error carrying the stacks of those still running.
// Goroutines are told apart by their id, which the runtime never reuses within a process.
//
// It replaces go.uber.org/goleak for pgcc's needs: the harness in internal/pgtest calls it from pgtest.Main,
// and packages that run without that harness (internal/pginstance) call it from their own TestMain.
package leakcheck

import (
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// runtimeFuncs are functions whose goroutines the Go runtime or the standard library start on their own and
// keep for the life of the process; a goroutine with one of them anywhere in its stack is never a leak.
var runtimeFuncs = []string{
	"os/signal.signal_recv",
	"os/signal.loop",
	"runtime.ensureSigM",
	"runtime/trace.Start.func1",
}

// Snapshot is the set of goroutines running at one moment.
type Snapshot struct {
	ids map[uint64]bool
}

// Take records the goroutines running now. Call it first thing in TestMain, before the tests start anything.
func Take() Snapshot {
	s := Snapshot{ids: map[uint64]bool{}}
	for _, g := range goroutines() {
		s.ids[g.id] = true
	}
	return s
}

// Check waits up to grace for every goroutine started since s to end, and returns nil once none is left. A
// goroutine whose stack contains one of the ignore functions (full names as the stack prints them, such as
// "net/http.(*persistConn).readLoop"), or one of the runtime's own, is left out. After grace it returns an
// error whose message holds the stacks of the goroutines still running.
func (s Snapshot) Check(grace time.Duration, ignore ...string) error {
	deadline := time.Now().Add(grace)
	for {
		leaked := s.leaked(ignore)
		if len(leaked) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			stacks := make([]string, len(leaked))
			for i, g := range leaked {
				stacks[i] = g.stack
			}
			return fmt.Errorf("%d goroutine(s) still running %v after the tests ended:\n\n%s",
				len(leaked), grace, strings.Join(stacks, "\n\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s Snapshot) leaked(ignore []string) []goroutine {
	var out []goroutine
	for _, g := range goroutines() {
		if s.ids[g.id] || g.calls(runtimeFuncs) || g.calls(ignore) {
			continue
		}
		out = append(out, g)
	}
	return out
}

// goroutine is one entry of a full stack dump.
type goroutine struct {
	id    uint64
	stack string   // the entry as printed, header included
	funcs []string // every function in the stack, "created by" included
}

func (g goroutine) calls(names []string) bool {
	for _, f := range g.funcs {
		for _, n := range names {
			if f == n {
				return true
			}
		}
	}
	return false
}

// goroutines returns every goroutine but the caller's, which runtime.Stack always prints first.
func goroutines() []goroutine {
	var out []goroutine
	for i, entry := range strings.Split(string(Stacks()), "\n\n") {
		if g, ok := parse(entry); ok && i > 0 {
			out = append(out, g)
		}
	}
	return out
}

// Stacks returns the stacks of all goroutines, as runtime.Stack prints them, however large the dump.
func Stacks() []byte {
	buf := make([]byte, 64<<10)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return buf[:n]
		}
		buf = make([]byte, 2*len(buf))
	}
}

// parse reads one entry of a dump:
//
//	goroutine 7 [chan receive]:
//	pkg.function(0x1, 0x2)
//		/path/file.go:12 +0x1d
//	created by pkg.starter in goroutine 1
//		/path/file.go:40 +0x2f
func parse(entry string) (goroutine, bool) {
	entry = strings.TrimSpace(entry)
	header, rest, _ := strings.Cut(entry, "\n")
	idText, ok := strings.CutPrefix(header, "goroutine ")
	if !ok {
		return goroutine{}, false
	}
	idText, _, _ = strings.Cut(idText, " ")
	id, err := strconv.ParseUint(idText, 10, 64)
	if err != nil {
		return goroutine{}, false
	}
	g := goroutine{id: id, stack: entry}
	for _, line := range strings.Split(rest, "\n") {
		if line == "" || strings.HasPrefix(line, "\t") {
			continue
		}
		if creator, ok := strings.CutPrefix(line, "created by "); ok {
			creator, _, _ = strings.Cut(creator, " in goroutine ")
			g.funcs = append(g.funcs, creator)
			continue
		}
		if i := strings.LastIndexByte(line, '('); i > 0 {
			line = line[:i]
		}
		g.funcs = append(g.funcs, line)
	}
	return g, true
}
