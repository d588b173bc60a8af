package pgtest

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pgcc/pgcc/internal/leakcheck"
)

// EnvWatchdog names the environment variable that sets the watchdog's limit for every test of the run (a Go
// duration such as 90s or 5m), or turns the watchdog off ("off" or "0"), say under a debugger.
const EnvWatchdog = "PGCC_TEST_WATCHDOG"

// DefaultWatchdog is how long a watched test may run, from the moment it is first watched, when neither
// [Deadline] nor [EnvWatchdog] says otherwise.
const DefaultWatchdog = 60 * time.Second

// watchdogExitCode is the test binary's exit status when the watchdog fires; go test reports it as a failure.
const watchdogExitCode = 2

// watch is one test's timer. The map of watches is harness state for the same reason as [harness]: a test
// binary has no other place to keep it.
type watch struct {
	name  string
	start time.Time
	limit time.Duration
	timer *time.Timer // nil while the watchdog is off
}

var (
	watchMu sync.Mutex
	watches = map[testing.TB]*watch{}
)

// Watch puts t under the watchdog: if t has not ended within the limit ([DefaultWatchdog], [EnvWatchdog] or
// the last [Deadline] for t), the harness prints t's name and the stacks of all goroutines to stderr, then
// exits the test binary with status 2, rather than letting a deadlocked test wait for go test's own timeout.
// Cleanup functions count as part of the test. Tests that get a database from [NewDB], [Pool], [DB.Pool] or
// [DB.Conn] are watched already; Watch is for tests that use none, such as tests of a server of their own.
// Watching costs one timer, stopped when t ends. Watch does not need [Main].
func Watch(t testing.TB) {
	t.Helper()
	watchTest(t)
}

// Deadline sets t's watchdog limit to d, counted from the moment t was first watched (now, if it was not),
// for tests that legitimately run long, such as fault-injection runs. It wins over [EnvWatchdog], unless that
// turns the watchdog off.
func Deadline(t testing.TB, d time.Duration) {
	t.Helper()
	if d <= 0 {
		t.Fatalf("pgtest: Deadline(%v): the limit must be positive", d)
	}
	w := watchTest(t)
	watchMu.Lock()
	defer watchMu.Unlock()
	w.limit = d
	if w.timer != nil {
		w.timer.Reset(time.Until(w.start.Add(d)))
	}
}

func watchTest(t testing.TB) *watch {
	t.Helper()
	limit, err := watchdogLimit()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	watchMu.Lock()
	defer watchMu.Unlock()
	if w := watches[t]; w != nil {
		return w
	}
	w := &watch{name: t.Name(), start: time.Now(), limit: limit}
	if limit > 0 {
		w.timer = time.AfterFunc(limit, w.fire)
	}
	watches[t] = w
	t.Cleanup(func() {
		watchMu.Lock()
		defer watchMu.Unlock()
		delete(watches, t)
		if w.timer != nil {
			w.timer.Stop()
		}
	})
	return w
}

// watchdogLimit reads [EnvWatchdog]: 0 means off.
func watchdogLimit() (time.Duration, error) {
	v := strings.TrimSpace(os.Getenv(EnvWatchdog))
	switch v {
	case "":
		return DefaultWatchdog, nil
	case "off", "0":
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("%s=%q: want a duration such as 90s, or off", EnvWatchdog, v)
	}
	return d, nil
}

// fire runs on the timer's goroutine: the test is stuck, and so, most likely, is the goroutine running it.
func (w *watch) fire() {
	watchMu.Lock()
	limit := w.limit
	watchMu.Unlock()
	stacks := leakcheck.Stacks()
	fmt.Fprintf(os.Stderr, "\npgtest: watchdog: %s still running after %v; stacks of all goroutines:\n\n%s\n\n",
		w.name, limit, stacks)
	fmt.Fprintf(os.Stderr, "pgtest: watchdog: %s did not end within %v: exiting (raise the limit with "+
		"pgtest.Deadline(t, d) or %s=<duration>)\n", w.name, limit, EnvWatchdog)
	os.Exit(watchdogExitCode)
}
