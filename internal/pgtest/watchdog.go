package pgtest

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/multitracer"

	"github.com/pgcc/pgcc/internal/leakcheck"
)

// EnvWatchdog names the environment variable that sets the watchdog's limit for every test of the run (a Go
// duration such as 90s or 5m), or turns the watchdog off ("off" or "0"), say under a debugger.
const EnvWatchdog = "PGCC_TEST_WATCHDOG"

// DefaultWatchdog is how long a watched test may go without progress, when neither [Deadline] nor
// [EnvWatchdog] says otherwise. Progress is a statement finished on one of the test's connections (those
// the harness opened for it); a test that opened none makes progress only by ending.
const DefaultWatchdog = 60 * time.Second

// capFactor bounds a test that keeps making progress but never ends (a livelock): it is stopped after
// capFactor times its limit, or after its [Deadline].
const capFactor = 5

// watchdogExitCode is the test binary's exit status when the watchdog fires; go test reports it as a failure.
const watchdogExitCode = 2

// watch is one test's timer. The map of watches is harness state for the same reason as [harness]: a test
// binary has no other place to keep it.
type watch struct {
	t     testing.TB
	name  string
	start time.Time
	limit time.Duration // longest time without progress
	cap   time.Duration // longest run, progress or not
	timer *time.Timer   // nil while the watchdog is off
	// progress is when the last statement on one of the test's connections finished, in Unix nanoseconds.
	progress atomic.Int64
}

// touch records progress. It runs on the test's connections' goroutines and costs one atomic store.
func (w *watch) touch() { w.progress.Store(time.Now().UnixNano()) }

var (
	watchMu sync.Mutex
	watches = map[testing.TB]*watch{}
)

// Watch puts t under the watchdog: if t makes no progress for the limit ([DefaultWatchdog] or [EnvWatchdog])
// or has not ended within its cap (five times the limit, or the last [Deadline] for t), the harness prints
// t's name and the stacks of all goroutines to stderr, then exits the test binary with status 2, rather than
// letting a deadlocked test wait for go test's own timeout. Progress is a statement finished on a connection
// the harness opened for t, so a test that is slow because the machine is loaded is not mistaken for a stuck
// one; a test with no such connection is stuck when it has not ended within the limit.
// Cleanup functions count as part of the test. Tests that get a database from [NewDB], [Pool], [DB.Pool] or
// [DB.Conn] are watched already; Watch is for tests that use none, such as tests of a server of their own.
// Watching costs one timer, stopped when t ends. Watch does not need [Main].
func Watch(t testing.TB) {
	t.Helper()
	watchTest(t)
}

// Deadline sets how long t may run in all to d, counted from the moment t was first watched (now, if it was
// not), for tests that legitimately run long, such as fault-injection runs; it still fails when t makes no
// progress for the limit, unless d is shorter. It wins over [EnvWatchdog], unless that turns the watchdog
// off.
func Deadline(t testing.TB, d time.Duration) {
	t.Helper()
	if d <= 0 {
		t.Fatalf("pgtest: Deadline(%v): the limit must be positive", d)
	}
	w := watchTest(t)
	watchMu.Lock()
	defer watchMu.Unlock()
	w.cap = d
	w.limit = min(w.limit, d)
	if w.timer != nil {
		w.timer.Reset(w.next())
	}
}

// Opaque is [Deadline] for a test whose progress the harness cannot see: its statements run on connections it
// did not open (a command under test with its own pool, a child process) or it spends long stretches without
// SQL (rendering plots). t is then stuck only when it has not ended within d of being first watched. The
// watchdog stays off when [EnvWatchdog] turns it off.
func Opaque(t testing.TB, d time.Duration) {
	t.Helper()
	if d <= 0 {
		t.Fatalf("pgtest: Opaque(%v): the limit must be positive", d)
	}
	w := watchTest(t)
	watchMu.Lock()
	defer watchMu.Unlock()
	w.cap, w.limit = d, d
	if w.timer != nil {
		w.timer.Reset(w.next())
	}
}

// next is how long from now the timer should fire: when the limit since the last progress or the cap since
// the start runs out, whichever is first. w's fields are guarded by watchMu.
func (w *watch) next() time.Duration {
	last := time.Unix(0, w.progress.Load())
	return min(time.Until(last.Add(w.limit)), time.Until(w.start.Add(w.cap)))
}

// tracer records progress for w on the connections the harness opens for a test.
type tracer struct{ w *watch }

func (tr tracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}
func (tr tracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) { tr.w.touch() }
func (tr tracer) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	return ctx
}
func (tr tracer) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) { tr.w.touch() }
func (tr tracer) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData)     { tr.w.touch() }
func (tr tracer) TraceConnectStart(ctx context.Context, _ pgx.TraceConnectStartData) context.Context {
	return ctx
}
func (tr tracer) TraceConnectEnd(context.Context, pgx.TraceConnectEndData) { tr.w.touch() }

// traced installs w's progress tracer on cfg, next to any tracer the test set.
func traced(cfg *pgx.ConnConfig, w *watch) {
	if w == nil {
		return
	}
	if cfg.Tracer == nil {
		cfg.Tracer = tracer{w}
		return
	}
	cfg.Tracer = multitracer.New(cfg.Tracer, tracer{w})
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
	w := &watch{t: t, name: t.Name(), start: time.Now(), limit: limit, cap: capFactor * limit}
	w.touch()
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

// fire runs on the timer's goroutine. When the test made progress since, it sets the timer again; otherwise
// the test is stuck, and so, most likely, is the goroutine running it.
func (w *watch) fire() {
	watchMu.Lock()
	if _, live := watches[w.t]; !live {
		watchMu.Unlock()
		return
	}
	if d := w.next(); d > 0 {
		w.timer.Reset(d)
		watchMu.Unlock()
		return
	}
	limit, cap := w.limit, w.cap
	idle := time.Since(time.Unix(0, w.progress.Load())).Round(time.Second)
	watchMu.Unlock()
	ran := time.Since(w.start).Round(time.Second)
	stacks := leakcheck.Stacks()
	fmt.Fprintf(os.Stderr, "\npgtest: watchdog: %s running for %v, the last %v without a statement finishing; stacks of all goroutines:\n\n%s\n\n",
		w.name, ran, idle, stacks)
	fmt.Fprintf(os.Stderr, "pgtest: watchdog: %s stuck (limit %v without progress, %v in all): exiting (raise the limits "+
		"with pgtest.Deadline(t, d) or %s=<duration>)\n", w.name, limit, cap, EnvWatchdog)
	os.Exit(watchdogExitCode)
}
