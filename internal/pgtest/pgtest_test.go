package pgtest

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// envWatchdogChild marks the child test binary TestWatchdogFires starts: it runs one hanging test, without the
// harness (no server needed, no databases left behind when the watchdog exits the process).
const envWatchdogChild = "PGCC_TEST_WATCHDOG_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(envWatchdogChild) == "1" {
		os.Exit(m.Run())
	}
	Main(m)
}

func TestNewDBIsMigratedAndIsolated(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a, b := Pool(t), Pool(t)

	var n int
	if err := a.QueryRow(ctx, "SELECT count(*) FROM pgcc.leases").Scan(&n); err != nil {
		t.Fatalf("lease table missing from the test database: %v", err)
	}
	if _, err := a.Exec(ctx, "CREATE TABLE only_in_a (id int)"); err != nil {
		t.Fatal(err)
	}
	var exists bool
	if err := b.QueryRow(ctx, "SELECT to_regclass('only_in_a') IS NOT NULL").Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Fatal("a table created in one test database is visible in another")
	}
}

func TestDatabaseDroppedAfterTest(t *testing.T) {
	t.Parallel()
	var name string
	t.Run("inner", func(t *testing.T) {
		db := NewDB(t)
		name = db.Name
		_ = db.Pool(t)
		_ = db.Conn(t)
	})
	h := get(t)
	var exists bool
	err := h.admin.QueryRow(context.Background(), "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists)
	if err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Fatalf("database %s still exists after its test ended", name)
	}
}

// TestLimitedRole: the role connects, is refused past its limit with 53300, is dropped with its test, and a
// leftover one (its test killed) is swept once its database is gone.
func TestLimitedRole(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	h := get(t)
	var role string
	t.Run("inner", func(t *testing.T) {
		db := NewDB(t)
		dsn := db.LimitedRole(t, 1)
		first, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer first.Close(ctx)
		if err := first.QueryRow(ctx, "SELECT current_user").Scan(&role); err != nil || role != db.Name+roleSuffix {
			t.Fatalf("connected as %q (%v), want %s", role, err, db.Name+roleSuffix)
		}
		_, err = pgx.Connect(ctx, dsn)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != pgerrcode.TooManyConnections {
			t.Fatalf("second connection: %v, want 53300", err)
		}
	})
	var exists bool
	if err := h.admin.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)", role).Scan(&exists); err != nil || exists {
		t.Fatalf("role %s still exists after its test (%v)", role, err)
	}

	// A leftover: a role named after a database that is gone, of a run of its own.
	run := "sweep" + strconv.Itoa(os.Getpid())
	leftover := Prefix + "1000000000_" + run + "_1_1" + roleSuffix
	if _, err := h.admin.Exec(ctx, "CREATE ROLE "+pgx.Identifier{leftover}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	dropped, err := Sweep(ctx, h.admin, run, 0)
	if err != nil || len(dropped) != 1 || dropped[0] != leftover {
		t.Fatalf("swept %v (%v), want [%s]", dropped, err, leftover)
	}
}

func TestExampleDatabaseSet(t *testing.T) {
	if os.Getenv(EnvExampleDatabaseURL) == "" {
		t.Fatalf("%s not set by Main", EnvExampleDatabaseURL)
	}
}

func TestParseName(t *testing.T) {
	t.Parallel()
	created, run, ok := parseName("pgcc_t_1700000000_ab12cd34_4242_7")
	if !ok || run != "ab12cd34" || !created.Equal(time.Unix(1700000000, 0)) {
		t.Fatalf("parseName = %v, %q, %v", created, run, ok)
	}
	for _, bad := range []string{"pgcc_t_x_ab_1_2", "pgcc_t_1_2_3", "other"} {
		if _, _, ok := parseName(bad); ok {
			t.Errorf("parseName(%q) accepted a foreign name", bad)
		}
	}
}

func TestWithDatabase(t *testing.T) {
	t.Parallel()
	tests := []struct{ in, want string }{
		{"postgres://u@h:5432/postgres?sslmode=disable", "postgres://u@h:5432/x?sslmode=disable"},
		{"postgresql://u:p@h/db", "postgresql://u:p@h/x"},
		{"host=h user=u dbname=postgres", "host=h user=u dbname=postgres dbname=x"},
	}
	for _, tt := range tests {
		got, err := withDatabase(tt.in, "x")
		if err != nil || got != tt.want {
			t.Errorf("withDatabase(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

// TestWatchdogFires runs this test binary again as a child whose only test hangs under a 100ms deadline: the
// watchdog must print the goroutines, naming the test, and make the child fail.
func TestWatchdogFires(t *testing.T) {
	if os.Getenv(envWatchdogChild) == "1" {
		Deadline(t, 100*time.Millisecond)
		time.Sleep(time.Minute) // the hang; the parent's context kills us if the watchdog does not
		return
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestWatchdogFires$", "-test.count=1")
	cmd.Env = append(os.Environ(), envWatchdogChild+"=1", EnvWatchdog+"=")
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != watchdogExitCode {
		t.Fatalf("child ended with %v, want exit status %d; output:\n%s", err, watchdogExitCode, out)
	}
	for _, want := range []string{"watchdog: TestWatchdogFires", "goroutine ", "time.Sleep"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("child output lacks %q:\n%s", want, out)
		}
	}
}

func TestWatchdogStopsWithTheTest(t *testing.T) {
	t.Parallel()
	var w *watch
	t.Run("inner", func(t *testing.T) {
		w = watchTest(t)
		Deadline(t, time.Hour)
		if again := watchTest(t); again != w {
			t.Error("a second watch of the same test made a second timer")
		}
	})
	watchMu.Lock()
	defer watchMu.Unlock()
	for tb := range watches {
		if tb.Name() == t.Name()+"/inner" {
			t.Fatal("the ended test is still watched")
		}
	}
	if w.timer != nil && w.timer.Stop() {
		t.Fatal("the ended test's timer was still armed")
	}
}

func TestWatchdogLimit(t *testing.T) {
	tests := []struct {
		env  string
		want time.Duration
		ok   bool
	}{
		{"", DefaultWatchdog, true},
		{"90s", 90 * time.Second, true},
		{"off", 0, true},
		{"0", 0, true},
		{"soon", 0, false},
		{"-1s", 0, false},
	}
	for _, tt := range tests {
		t.Setenv(EnvWatchdog, tt.env)
		got, err := watchdogLimit()
		if got != tt.want || (err == nil) != tt.ok {
			t.Errorf("%s=%q: limit %v, error %v; want %v, ok %v", EnvWatchdog, tt.env, got, err, tt.want, tt.ok)
		}
	}
}

// TestWatchdogWaitsForProgressThenFires runs a child whose test makes progress (as a statement finishing on
// its connections would record it) for twice its 300ms limit, then stops: the watchdog must leave it alone
// while it progresses and stop it once it does not.
func TestWatchdogWaitsForProgressThenFires(t *testing.T) {
	if os.Getenv(envWatchdogChild) == "1" {
		w := watchTest(t)
		until := time.Now().Add(600 * time.Millisecond)
		for time.Now().Before(until) {
			w.touch()
			time.Sleep(50 * time.Millisecond)
		}
		os.Stderr.WriteString("progress stopped\n")
		time.Sleep(time.Minute) // stuck from here on
		return
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestWatchdogWaitsForProgressThenFires$", "-test.count=1")
	cmd.Env = append(os.Environ(), envWatchdogChild+"=1", EnvWatchdog+"=300ms")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != watchdogExitCode {
		t.Fatalf("child ended with %v, want exit status %d; output:\n%s", err, watchdogExitCode, out)
	}
	if !strings.Contains(string(out), "progress stopped\n") {
		t.Errorf("the watchdog stopped the child while it was making progress:\n%s", out)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("the child ran %v: the watchdog did not stop it after its progress stopped", took)
	}
}
