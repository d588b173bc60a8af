// Package pginstance runs a PostgreSQL server of a test's own, for tests that crash, restart, promote or
// otherwise mistreat a server, which they must never do to the shared one.
//
//	inst := pginstance.Start(t)            // initdb, configure, start; stopped and removed when t ends
//	pool, _ := pgxpool.New(ctx, inst.DSN("postgres"))
//	inst.Kill()                            // SIGKILL the postmaster and its children
//	inst.Start()                           // crash recovery, same port
//
// An instance lives in a temporary directory of its own (data directory, Unix socket directory, log), listens
// on 127.0.0.1 on a free port below 32768, trusts every local connection, and runs as the postgres user when
// the tests run as root (PostgreSQL refuses root). It is configured for tests: small shared memory,
// autovacuum off, fsync off unless [Durable], and WAL and replication settings that let [Instance.Standby]
// stream from it.
//
// # Standbys and failover
//
// [Instance.Standby] clones a running instance with pg_basebackup into a streaming hot standby on another
// port. [Instance.SetSynchronous] makes commits on the primary wait for it, [Instance.Promote] turns it into a
// primary, and [MultiHostDSN] gives clients both hosts with target_session_attrs=read-write, so they find
// whichever is the primary.
//
// # Bounded and clean
//
// Every wait is bounded: a start that does not complete within [StartTimeout] fails the test with the tail of
// the server's log. When the test ends the server is stopped (immediate mode), any process of it still
// running is killed, and its directory removed. A test binary that dies before its cleanup runs (the pgtest
// watchdog, a timeout) leaves its servers behind; the next Start sweeps them: it kills the servers of
// directories whose owning process has ended and removes those directories.
//
// Methods fail the test they were started for (t.Fatal) and must be called from that test's goroutine.
// Skipped, with a message, when the server binaries are missing, unless the CI environment variable is true.
package pginstance

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pgcc/pgcc/internal/pgproc"
)

// StartTimeout bounds each start, stop, promotion, base backup and replication wait.
const StartTimeout = 45 * time.Second

// dirPrefix starts the name of every instance's directory under the system's temporary directory.
const dirPrefix = "pgcc-pginstance-"

// Option adjusts an instance before it first starts.
type Option func(*config)

type config struct {
	durable  bool
	settings [][2]string
}

// Durable turns fsync and full_page_writes on, for tests whose point is what survives a crash of the machine
// rather than of the server. (A SIGKILL of the server loses nothing committed even without them: the kernel
// still holds the writes.)
func Durable() Option { return func(c *config) { c.durable = true } }

// Setting sets a server parameter in the instance's configuration, such as Setting("max_connections", "20").
// The value is written as a quoted string, which PostgreSQL accepts for parameters of every type.
func Setting(name, value string) Option {
	return func(c *config) { c.settings = append(c.settings, [2]string{name, value}) }
}

// Instance is a PostgreSQL server of a test's own.
type Instance struct {
	t       testing.TB
	bin     string // directory of the server binaries
	dir     string // the instance's own temporary directory
	data    string
	sock    string
	log     string
	port    int
	cfg     config
	appName string      // application_name a standby streams with; "" for a primary
	started pgproc.Proc // the postmaster this package last started, for cleanup
}

// Start creates, configures and starts an instance for t, and stops and removes it when t ends.
func Start(t testing.TB, opts ...Option) *Instance {
	t.Helper()
	i := newInstance(t, opts)
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(i.bin, "initdb"), "-D", i.data, "-A", "trust", "-U", "postgres",
		"--no-sync", "-E", "UTF8", "--locale=C")
	if out, err := i.run(cmd); err != nil {
		t.Fatalf("pginstance: initdb: %v\n%s", err, out)
	}
	if err := os.WriteFile(filepath.Join(i.data, "postgresql.conf"),
		appendInclude(i.readFile(filepath.Join(i.data, "postgresql.conf"))), 0o600); err != nil {
		t.Fatal(err)
	}
	i.startOnFreePort()
	return i
}

func newInstance(t testing.TB, opts []Option) *Instance {
	t.Helper()
	bin := pgproc.BinDir()
	pgproc.Need(t, filepath.Join(bin, "initdb"), filepath.Join(bin, "pg_ctl"), filepath.Join(bin, "postgres"),
		filepath.Join(bin, "pg_basebackup"))
	pgproc.SweepOrphans(dirPrefix, stopOrphan)
	i := &Instance{t: t, bin: bin}
	for _, o := range opts {
		o(&i.cfg)
	}
	dir, err := pgproc.MakeWorkDir(dirPrefix)
	if err != nil {
		t.Fatalf("pginstance: %v", err)
	}
	i.dir, i.data, i.sock, i.log = dir, filepath.Join(dir, "data"), filepath.Join(dir, "sock"), filepath.Join(dir, "postgres.log")
	t.Cleanup(i.cleanup)
	if err := os.Mkdir(i.sock, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(i.log, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := pgproc.Chown(i.sock, i.log); err != nil {
		t.Fatal(err)
	}
	return i
}

// includeLine makes postgresql.conf read the instance's settings, which [Instance.writeSettings] rewrites
// whole (a standby copies the primary's files, then gets a port of its own).
const includeLine = "include 'pginstance.conf'\n"

func appendInclude(conf []byte) []byte {
	if strings.Contains(string(conf), includeLine) {
		return conf
	}
	return append(conf, "\n"+includeLine...)
}

// writeSettings writes pginstance.conf for the instance's port.
func (i *Instance) writeSettings() {
	i.t.Helper()
	onOff := map[bool]string{true: "on", false: "off"}
	settings := [][2]string{
		{"listen_addresses", "127.0.0.1"},
		{"port", strconv.Itoa(i.port)},
		{"unix_socket_directories", i.sock},
		{"max_connections", "100"},
		{"shared_buffers", "32MB"},
		{"fsync", onOff[i.cfg.durable]},
		{"full_page_writes", onOff[i.cfg.durable]},
		{"wal_level", "replica"},
		{"max_wal_senders", "10"},
		{"max_replication_slots", "10"},
		{"wal_keep_size", "256MB"},
		{"hot_standby", "on"},
		// A standby whose primary has died retries WAL sources at this interval and, in PostgreSQL 15, notices
		// a promotion only then: 5 s by default, 0.1 s here.
		{"wal_retrieve_retry_interval", "100ms"},
		{"autovacuum", "off"},
		{"log_line_prefix", "%m [%p] "},
		{"logging_collector", "off"},
	}
	if i.appName != "" {
		settings = append(settings, [2]string{"cluster_name", i.appName})
	}
	settings = append(settings, i.cfg.settings...)
	var b strings.Builder
	b.WriteString("# Written by internal/pginstance.\n")
	for _, s := range settings {
		fmt.Fprintf(&b, "%s = '%s'\n", s[0], strings.ReplaceAll(s[1], "'", "''"))
	}
	path := filepath.Join(i.data, "pginstance.conf")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		i.t.Fatal(err)
	}
	if err := pgproc.Chown(path); err != nil {
		i.t.Fatal(err)
	}
}

// startOnFreePort starts the server on a free port, trying another if the one picked was taken meanwhile.
func (i *Instance) startOnFreePort() {
	i.t.Helper()
	var err error
	for range 3 {
		if i.port, err = pgproc.FreePort(); err != nil {
			break
		}
		i.writeSettings()
		if err = i.start(); err == nil {
			return
		}
		if !strings.Contains(pgproc.Tail(i.log, 20), "could not bind") {
			break
		}
	}
	i.t.Fatalf("pginstance: %v\n--- log tail (%s):\n%s", err, i.log, i.LogTail())
}

// start runs pg_ctl start and waits until the server accepts connections.
func (i *Instance) start() error {
	if err := pgproc.AwaitReaped(filepath.Join(i.data, "postmaster.pid"), 15*time.Second); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout+5*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(i.bin, "pg_ctl"), "-D", i.data, "-l", i.log, "-w",
		"-t", strconv.Itoa(int(StartTimeout/time.Second)), "start")
	out, err := i.run(cmd)
	if p, ok := pgproc.ReadPIDFile(filepath.Join(i.data, "postmaster.pid"), i.data); ok {
		i.started = p // even if pg_ctl gave up waiting: cleanup must find it
	}
	if err != nil {
		return fmt.Errorf("pg_ctl start on port %d: %v\n%s", i.port, err, out)
	}
	return nil
}

// run runs cmd as the postgres user when we are root, and returns its combined output.
func (i *Instance) run(cmd *exec.Cmd) ([]byte, error) {
	if err := pgproc.AsPostgres(cmd); err != nil {
		return nil, err
	}
	cmd.Dir = i.dir
	cmd.WaitDelay = 5 * time.Second // pg_ctl's detached server keeps no pipe of ours, but be sure
	return cmd.CombinedOutput()
}

func (i *Instance) readFile(path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		i.t.Fatal(err)
	}
	return b
}

// Port returns the port the instance listens on, on 127.0.0.1. It stays the same across restarts.
func (i *Instance) Port() int { return i.port }

// Host returns the address the instance listens on: 127.0.0.1.
func (i *Instance) Host() string { return "127.0.0.1" }

// DataDir returns the instance's data directory.
func (i *Instance) DataDir() string { return i.data }

// DSN returns a connection string for database db as the superuser postgres.
func (i *Instance) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", i.port, url.PathEscape(db))
}

// MultiHostDSN returns a connection string for database db listing primary then standby, with
// target_session_attrs=read-write: a client connects to whichever accepts writes, so after a failover it
// finds the promoted standby. connect_timeout bounds each attempt.
func MultiHostDSN(primary, standby *Instance, db string) string {
	return fmt.Sprintf("host=127.0.0.1,127.0.0.1 port=%d,%d user=postgres dbname=%s sslmode=disable "+
		"target_session_attrs=read-write connect_timeout=5", primary.port, standby.port, keywordValue(db))
}

// keywordValue quotes a value for a keyword/value connection string.
func keywordValue(v string) string {
	return "'" + strings.ReplaceAll(strings.ReplaceAll(v, `\`, `\\`), "'", `\'`) + "'"
}

// Start starts the instance again after [Instance.Stop] or [Instance.Kill], on the same port and data
// directory: after a Kill, PostgreSQL runs crash recovery first. It returns once the server accepts
// connections.
func (i *Instance) Start() {
	i.t.Helper()
	if err := i.start(); err != nil {
		i.t.Fatalf("pginstance: %v\n--- log tail (%s):\n%s", err, i.log, i.LogTail())
	}
}

// Stop shuts the server down cleanly (pg_ctl stop -m fast) and waits until it has.
func (i *Instance) Stop() {
	i.t.Helper()
	if out, err := i.pgctl("stop", "-m", "fast"); err != nil {
		i.t.Fatalf("pginstance: pg_ctl stop: %v\n%s\n--- log tail:\n%s", err, out, i.LogTail())
	}
}

// Restart is Stop then Start.
func (i *Instance) Restart() {
	i.t.Helper()
	i.Stop()
	i.Start()
}

// Kill kills the server the way a crash would: SIGKILL to the postmaster and to every one of its children, so
// none is left holding the shared memory, which would make the next start refuse. It waits until they are
// gone. Killing a server that is not running does nothing.
func (i *Instance) Kill() {
	i.t.Helper()
	p, ok := pgproc.ReadPIDFile(filepath.Join(i.data, "postmaster.pid"), i.data)
	if !ok {
		return
	}
	if err := pgproc.KillTree(p, 10*time.Second); err != nil {
		i.t.Fatalf("pginstance: %v", err)
	}
}

// Running reports whether the instance's postmaster is running.
func (i *Instance) Running() bool {
	_, ok := pgproc.ReadPIDFile(filepath.Join(i.data, "postmaster.pid"), i.data)
	return ok
}

func (i *Instance) pgctl(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout+5*time.Second)
	defer cancel()
	full := append([]string{"-D", i.data, "-w", "-t", strconv.Itoa(int(StartTimeout / time.Second))}, args...)
	return i.run(exec.CommandContext(ctx, filepath.Join(i.bin, "pg_ctl"), full...))
}

// Exec runs sql with args in database postgres as the superuser, on a connection of its own, within
// StartTimeout.
func (i *Instance) Exec(sql string, args ...any) {
	i.t.Helper()
	if err := i.exec("postgres", sql, args...); err != nil {
		i.t.Fatalf("pginstance: %s: %v", sql, err)
	}
}

func (i *Instance) exec(db, sql string, args ...any) error {
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, i.DSN(db))
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql, args...)
	return err
}

// queryBool runs a query returning one boolean in database postgres.
func (i *Instance) queryBool(ctx context.Context, sql string, args ...any) (bool, error) {
	conn, err := pgx.Connect(ctx, i.DSN("postgres"))
	if err != nil {
		return false, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var v bool
	err = conn.QueryRow(ctx, sql, args...).Scan(&v)
	return v, err
}

// CreateDatabase creates database name.
func (i *Instance) CreateDatabase(name string) {
	i.t.Helper()
	i.Exec("CREATE DATABASE " + pgx.Identifier{name}.Sanitize())
}

// LogTail returns the last 40 lines of the server's log, for failure messages.
func (i *Instance) LogTail() string { return pgproc.Tail(i.log, 40) }

// Standby makes a streaming hot standby of i, a running instance, for t: pg_basebackup (-R -X stream) into
// a directory of its own, its own port, then started and waited for until it accepts read-only connections.
// It streams with application_name standby_<port> (see [Instance.SetSynchronous]). opts apply as for [Start];
// the standby's fsync follows [Durable] in opts, not the primary's.
func (i *Instance) Standby(t testing.TB, opts ...Option) *Instance {
	t.Helper()
	s := newInstance(t, opts)
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(s.bin, "pg_basebackup"), "-D", s.data, "-h", "127.0.0.1",
		"-p", strconv.Itoa(i.port), "-U", "postgres", "-R", "-X", "stream", "-c", "fast", "--no-sync")
	if out, err := s.run(cmd); err != nil {
		t.Fatalf("pginstance: pg_basebackup from port %d: %v\n%s\n--- primary log tail:\n%s", i.port, err, out, i.LogTail())
	}
	// The primary's synchronous_standby_names (ALTER SYSTEM) came along: once promoted, the standby would
	// wait for a standby of its own that does not exist.
	auto := filepath.Join(s.data, "postgresql.auto.conf")
	var kept []string
	for _, line := range strings.Split(string(s.readFile(auto)), "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "synchronous_standby_names") {
			kept = append(kept, line)
		}
	}
	if err := os.WriteFile(auto, []byte(strings.Join(kept, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	var err error
	for range 3 {
		if s.port, err = pgproc.FreePort(); err != nil {
			break
		}
		s.appName = "standby_" + strconv.Itoa(s.port)
		// Later lines win: primary_conninfo with the standby's application_name.
		conninfo := fmt.Sprintf("\nprimary_conninfo = 'host=127.0.0.1 port=%d user=postgres application_name=%s'\n",
			i.port, s.appName)
		if err = os.WriteFile(auto, append([]byte(strings.Join(kept, "\n")), conninfo...), 0o600); err != nil {
			break
		}
		s.writeSettings()
		if err = s.start(); err == nil {
			break
		}
		if !strings.Contains(pgproc.Tail(s.log, 20), "could not bind") {
			break
		}
	}
	if err != nil {
		t.Fatalf("pginstance: standby: %v\n--- log tail (%s):\n%s", err, s.log, s.LogTail())
	}
	if err := s.waitFor(ctx, "the standby to accept read-only connections", "SELECT pg_is_in_recovery()"); err != nil {
		t.Fatal(err)
	}
	return s
}

// ApplicationName returns the application_name a standby streams with, "" for an instance made by [Start].
func (i *Instance) ApplicationName() string { return i.appName }

// Promote turns a standby into a primary (pg_ctl promote) and returns once it accepts writes.
func (i *Instance) Promote() {
	i.t.Helper()
	if out, err := i.pgctl("promote"); err != nil {
		i.t.Fatalf("pginstance: pg_ctl promote: %v\n%s\n--- log tail:\n%s", err, out, i.LogTail())
	}
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	if err := i.waitFor(ctx, "the promoted standby to accept writes", "SELECT NOT pg_is_in_recovery()"); err != nil {
		i.t.Fatal(err)
	}
}

// SetSynchronous makes commits on the primary i wait until the given standbys (the first one listed that is
// connected, then the next…) have flushed them: synchronous_standby_names lists their application names, in
// priority order, and the configuration is reloaded. It returns once the first standby streams as
// synchronous. With no standbys, replication becomes asynchronous again.
func (i *Instance) SetSynchronous(standbys ...*Instance) {
	i.t.Helper()
	names := make([]string, len(standbys))
	for k, s := range standbys {
		if s.appName == "" {
			i.t.Fatal("pginstance: SetSynchronous with an instance that is not a standby")
		}
		names[k] = `"` + s.appName + `"`
	}
	if len(names) == 0 {
		i.Exec("ALTER SYSTEM RESET synchronous_standby_names")
	} else {
		i.Exec("ALTER SYSTEM SET synchronous_standby_names = " + quoteLiteral(strings.Join(names, ", ")))
	}
	i.Exec("SELECT pg_reload_conf()")
	if len(standbys) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	err := i.waitFor(ctx, "standby "+standbys[0].appName+" to stream synchronously",
		"SELECT EXISTS (SELECT FROM pg_stat_replication WHERE application_name = $1 AND sync_state = 'sync')",
		standbys[0].appName)
	if err != nil {
		i.t.Fatal(err)
	}
}

// WaitReplay waits until the standby i has replayed everything the primary has written so far.
func (i *Instance) WaitReplay(primary *Instance) {
	i.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, primary.DSN("postgres"))
	if err != nil {
		i.t.Fatal(err)
	}
	var lsn string
	err = conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&lsn)
	_ = conn.Close(ctx)
	if err != nil {
		i.t.Fatal(err)
	}
	if err := i.waitFor(ctx, "replay of "+lsn, "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", lsn); err != nil {
		i.t.Fatal(err)
	}
}

// waitFor polls a boolean query on database postgres until it returns true, connection failures included,
// or ctx ends; the error then carries the last failure and the log tail.
func (i *Instance) waitFor(ctx context.Context, what, sql string, args ...any) error {
	var last error
	for {
		ok, err := i.queryBool(ctx, sql, args...)
		if err == nil && ok {
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("pginstance: waiting for %s: %w (last error: %v)\n--- log tail (%s):\n%s",
				what, ctx.Err(), last, i.log, i.LogTail())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// cleanup stops the server whatever its state, kills what is left of it, and removes the directory.
func (i *Instance) cleanup() {
	if i.Running() {
		_, _ = i.pgctlStopImmediate()
	}
	var errs []error
	if p, ok := pgproc.ReadPIDFile(filepath.Join(i.data, "postmaster.pid"), i.data); ok {
		errs = append(errs, pgproc.KillTree(p, 10*time.Second))
	}
	if i.started.Alive() {
		errs = append(errs, pgproc.KillTree(i.started, 10*time.Second))
	}
	errs = append(errs, os.RemoveAll(i.dir))
	if err := errors.Join(errs...); err != nil {
		i.t.Errorf("pginstance: cleanup of %s: %v", i.dir, err)
	}
}

func (i *Instance) pgctlStopImmediate() ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	return i.run(exec.CommandContext(ctx, filepath.Join(i.bin, "pg_ctl"), "-D", i.data, "-w", "-t", "10",
		"stop", "-m", "immediate"))
}

// stopOrphan kills the server of an orphaned instance directory, if one is running.
func stopOrphan(dir string) {
	data := filepath.Join(dir, "data")
	if p, ok := pgproc.ReadPIDFile(filepath.Join(data, "postmaster.pid"), data); ok {
		_ = pgproc.KillTree(p, 10*time.Second)
	}
}
