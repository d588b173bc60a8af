// Package pgtest runs pgcc's tests against a real PostgreSQL server, one fresh database per test.
//
// Every test package calls [Main] from its TestMain. Main finds a server, creates one template database per
// test binary with pgcc's migrations applied, runs the tests, and drops what it created. Each test then asks
// for its own database with [NewDB] or [Pool]: a CREATE DATABASE … TEMPLATE clone of the template (tens of
// milliseconds), dropped when the test ends, so tests call t.Parallel freely and never see each other's rows
// or what an earlier run left behind.
//
// # Finding a server
//
// In this order:
//  1. PGCC_TEST_DATABASE_URL, a connection string for a role that may create databases;
//  2. a PostgreSQL container started by testcontainers-go when a Docker engine answers;
//  3. postgres@127.0.0.1:5432 (trust authentication, as on a developer machine);
//  4. none: with CI set to a true value the run fails, otherwise the package's tests are skipped with a
//     message that says how to provide a server.
//
// # Stopping tests that hang
//
// Every test that gets a database through the harness is watched: one still running [DefaultWatchdog] after
// it was first watched makes the harness print its name and every goroutine's stack, and exit the binary with
// a failure. [Deadline] gives one test more time, [EnvWatchdog] changes the limit for the run, [Watch] puts a
// test that uses no database under the same watchdog.
//
// # Leaving nothing behind
//
// Database names carry the creation time: pgcc_t_<unix seconds>_<run>_<pid>_<n>. Test databases are dropped
// in t.Cleanup (which runs even when a test fails or panics), the template and the examples' database when
// Main returns, and Main first drops any pgcc_t_ database older than [staleAfter], left by a run that was
// killed. `make test` also passes PGCC_TEST_RUN and sweeps that run's databases when go test exits, whatever
// its outcome (internal/pgtest/sweep).
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc/internal/leakcheck"
	"github.com/pgcc/pgcc/internal/pgserver"
	"github.com/pgcc/pgcc/internal/schema"
	"github.com/pgcc/pgcc/internal/testdb"
)

// EnvDatabaseURL names the environment variable that points the tests at a server.
const EnvDatabaseURL = "PGCC_TEST_DATABASE_URL"

// EnvExampleDatabaseURL names the environment variable [Main] sets to a database for the package's runnable
// examples. Examples read it the way a service reads its DATABASE_URL.
const EnvExampleDatabaseURL = "PGCC_EXAMPLE_DATABASE_URL"

// EnvRun names the environment variable carrying an identifier shared by every test binary of one `make test`
// run, so that the run's databases can be swept together afterwards.
const EnvRun = "PGCC_TEST_RUN"

// Prefix starts the name of every database the harness creates.
const Prefix = "pgcc_t_"

// staleAfter is the age past which a database with [Prefix] is taken to be a leftover of a killed run.
const staleAfter = 2 * time.Hour

// harness is the per-binary state Main sets up. It is package state because testing.M offers no other place
// to hang it; it lives in an internal test package, never in the library.
type harness struct {
	baseDSN  string
	admin    *pgxpool.Pool
	template string
	names    testdb.Namer
	source   string
}

var (
	current    *harness
	currentErr error
	mainCalled bool
	mu         sync.Mutex
)

// Main is the body of every test package's TestMain:
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// It never returns: it exits with the tests' status, after dropping the template and examples databases, and
// fails a passing run that left goroutines running (internal/leakcheck).
func Main(m *testing.M) {
	before := leakcheck.Take()
	code := run(m)
	if code == 0 {
		// Everything the tests started, and the harness itself, must be gone by now: pools closed, retry
		// loops returned, background goroutines stopped.
		if err := before.Check(goroutineGrace, "github.com/testcontainers/testcontainers-go.(*Reaper).connect.func1"); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: goroutines leaked by the tests: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// goroutineGrace is how long [Main] gives goroutines to end after the tests, for those that stop asynchronously
// (a closed pool's health checker, a connection's context watcher).
const goroutineGrace = 2 * time.Second

func run(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	h, stop, err := start(ctx)
	mu.Lock()
	mainCalled = true
	current, currentErr = h, err
	mu.Unlock()
	if err != nil {
		if InCI() {
			fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
			return 1
		}
		fmt.Fprintf(os.Stderr, "pgtest: SKIP: %v\n", err)
		return 0
	}
	defer stop()

	exampleDB, err := h.createDatabase(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: create examples database: %v\n", err)
		return 1
	}
	defer h.dropDatabase(exampleDB)
	exampleDSN, err := withDatabase(h.baseDSN, exampleDB)
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		return 1
	}
	os.Setenv(EnvExampleDatabaseURL, exampleDSN)

	return m.Run()
}

// InCI reports whether the CI environment variable holds a true value, in which case a missing database is a
// failure, never a skip.
func InCI() bool {
	v, err := strconv.ParseBool(os.Getenv("CI"))
	return err == nil && v
}

// serverBusyWait is how long [Main] waits for a connection slot when the server answers 53300 (too many
// connections): the server is shared with other test binaries and services, and a slot frees up as soon as
// one of them ends a test.
const serverBusyWait = time.Minute

// pingPatiently pings through pool, waiting with backoff while the server has no free connection slot.
func pingPatiently(ctx context.Context, pool *pgxpool.Pool) error {
	deadline := time.Now().Add(serverBusyWait)
	for delay := 250 * time.Millisecond; ; delay = min(2*delay, 2*time.Second) {
		err := pool.Ping(ctx)
		var pgErr *pgconn.PgError
		if err == nil || !errors.As(err, &pgErr) || pgErr.Code != pgerrcode.TooManyConnections || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
	}
}

// start finds a server, sweeps stale databases and builds the migrated template. stop drops the template and
// releases the server.
func start(ctx context.Context) (*harness, func(), error) {
	dsn, source, release, err := findServer(ctx)
	if err != nil {
		return nil, nil, err
	}
	admin, err := pgxpool.New(ctx, dsn)
	if err == nil {
		err = pingPatiently(ctx, admin)
	}
	if err != nil {
		if admin != nil {
			admin.Close()
		}
		release()
		return nil, nil, fmt.Errorf("connect to %s (%s): %w", redact(dsn), source, err)
	}
	h := &harness{baseDSN: dsn, admin: admin, source: source, names: testdb.Namer{Prefix: Prefix, Run: testdb.RunID(EnvRun)}}
	if _, err := Sweep(ctx, admin, "", staleAfter); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: sweeping stale databases: %v\n", err)
	}
	stopAll := func() {
		admin.Close()
		release()
	}
	if err := h.buildTemplate(ctx); err != nil {
		stopAll()
		return nil, nil, fmt.Errorf("build template database: %w", err)
	}
	return h, func() {
		h.dropDatabase(h.template)
		stopAll()
	}, nil
}

func (h *harness) buildTemplate(ctx context.Context) error {
	name, err := h.createDatabaseFrom(ctx, "template0")
	if err != nil {
		return err
	}
	h.template = name
	dsn, err := withDatabase(h.baseDSN, name)
	if err != nil {
		return err
	}
	// The connection is closed before returning, so no session remains on the template and CREATE DATABASE
	// … TEMPLATE can copy it.
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return schema.Apply(ctx, conn)
}

func (h *harness) createDatabase(ctx context.Context) (string, error) {
	return h.createDatabaseFrom(ctx, h.template)
}

func (h *harness) createDatabaseFrom(ctx context.Context, template string) (string, error) {
	name := h.names.Next()
	return name, testdb.Create(ctx, h.admin, name, template)
}

// dropDatabase drops name, terminating sessions a test left open. It runs during cleanup, so it uses a context
// of its own rather than one a finished test may have cancelled.
func (h *harness) dropDatabase(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := dropDatabase(ctx, h.admin, name); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: drop database %s: %v\n", name, err)
	}
}

func dropDatabase(ctx context.Context, admin *pgxpool.Pool, name string) error {
	return testdb.Drop(ctx, admin, name)
}

// Sweep drops every harness database whose name carries run (every run when run is empty) and that is older
// than minAge, and the roles of [DB.LimitedRole] left behind by such databases, and returns the names it
// dropped.
func Sweep(ctx context.Context, admin *pgxpool.Pool, run string, minAge time.Duration) ([]string, error) {
	dropped, err := testdb.Sweep(ctx, admin, Prefix, run, minAge)
	roles, rolesErr := sweepRoles(ctx, admin, run, minAge)
	return append(dropped, roles...), errors.Join(err, rolesErr)
}

// sweepRoles drops the roles of LimitedRole whose database is gone (a test killed before its clean-up), that
// carry run (any when empty) and are older than minAge.
func sweepRoles(ctx context.Context, admin *pgxpool.Pool, run string, minAge time.Duration) ([]string, error) {
	return testdb.SweepNamed(ctx, admin, `SELECT rolname FROM pg_roles r
		WHERE starts_with(rolname, $1) AND right(rolname, length($2)) = $2
		AND NOT EXISTS (SELECT FROM pg_database WHERE datname = left(r.rolname, -length($2)))`, []any{Prefix, roleSuffix},
		func(name string) (time.Time, string, bool) {
			return testdb.ParseName(Prefix, strings.TrimSuffix(name, roleSuffix))
		}, run, minAge,
		func(ctx context.Context, name string) error {
			_, err := admin.Exec(ctx, "DROP ROLE IF EXISTS "+pgx.Identifier{name}.Sanitize())
			return err
		})
}

// parseName reads the creation time and run out of a harness database name.
func parseName(name string) (created time.Time, run string, ok bool) {
	return testdb.ParseName(Prefix, name)
}

// findServer returns a connection string for a server on which the harness may create databases.
func findServer(ctx context.Context) (dsn, source string, release func(), err error) {
	srv, err := testdb.FindServer(ctx, EnvDatabaseURL, pgserver.StartContainer)
	if err != nil {
		return "", "", nil, err
	}
	return srv.DSN, srv.Source, srv.Release, nil
}

// withDatabase returns dsn with its database replaced by name.
func withDatabase(dsn, name string) (string, error) {
	return testdb.WithDatabase(EnvDatabaseURL, dsn, name)
}

// redact hides a password in a connection string for messages.
func redact(dsn string) string { return testdb.Redact(dsn) }

func get(t testing.TB) *harness {
	t.Helper()
	mu.Lock()
	h, err, called := current, currentErr, mainCalled
	mu.Unlock()
	switch {
	case !called:
		t.Fatal("pgtest: the package has no TestMain calling pgtest.Main(m)")
	case err != nil:
		t.Fatalf("pgtest: %v", err)
	}
	return h
}
