// Package pgbouncer runs a PgBouncer of a test's own in front of a PostgreSQL server, for tests of how pgcc
// behaves behind a pooler: transaction pooling (a session that changes server connections between
// transactions, no prepared statements), pauses, reconnects and a pooler that goes away.
//
//	cfg, _ := pgx.ParseConfig(db.DSN)
//	b := pgbouncer.Start(t, pgbouncer.Config{ServerHost: cfg.Host, ServerPort: int(cfg.Port), PoolSize: 2})
//	pool, _ := pgxpool.New(ctx, b.DSN(db.Name)) // any database name passes through
//
// The pooler listens on 127.0.0.1 on a free port below 32768, trusts user postgres (its admin user), maps
// every database name to the same name on the server, and runs as the postgres user when the tests run as
// root (PgBouncer refuses root). It is stopped when the test ends; a test binary that dies first takes it
// along (parent-death signal), and the next Start removes what is left.
//
// PgBouncer before 1.21 does not support prepared statements in transaction mode: use pgx's
// QueryExecModeExec, QueryExecModeCacheDescribe or QueryExecModeSimpleProtocol through it.
//
// Skipped, with a message, when the pgbouncer binary is missing, unless the CI environment variable is true.
package pgbouncer

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcc/pgcc/internal/pgproc"
)

// StartTimeout bounds the wait for PgBouncer to accept connections, and for it to stop.
const StartTimeout = 15 * time.Second

// EnvBinary names the environment variable that points at the pgbouncer binary, when it is not
// /usr/sbin/pgbouncer or on PATH.
const EnvBinary = "PGCC_PGBOUNCER"

// dirPrefix starts the name of every pooler's directory under the system's temporary directory.
const dirPrefix = "pgcc-pgbouncer-"

// PoolMode is PgBouncer's pool_mode: when a server connection goes back to the pool.
type PoolMode string

const (
	// TransactionMode returns the server connection at the end of each transaction.
	TransactionMode PoolMode = "transaction"
	// SessionMode keeps the server connection until the client disconnects.
	SessionMode PoolMode = "session"
	// StatementMode returns it after each statement; multi-statement transactions are refused.
	StatementMode PoolMode = "statement"
)

// Config says how to run the pooler. The zero value of each field but ServerPort means its default.
type Config struct {
	// ServerHost is the PostgreSQL server's address; "" means 127.0.0.1.
	ServerHost string
	// ServerPort is the PostgreSQL server's port. Required.
	ServerPort int
	// PoolMode is pool_mode; "" means TransactionMode.
	PoolMode PoolMode
	// PoolSize is default_pool_size, the server connections per database and user; 0 means 4.
	PoolSize int
	// MaxClientConn is max_client_conn; 0 means 200.
	MaxClientConn int
	// Settings are more [pgbouncer] settings, such as "server_lifetime": "10"; they replace the package's
	// defaults of the same name.
	Settings map[string]string
}

// Bouncer is a PgBouncer of a test's own.
type Bouncer struct {
	t      testing.TB
	bin    string
	dir    string
	ini    string
	log    string
	port   int
	cmd    *exec.Cmd
	exited chan struct{} // closed once cmd has been waited for
}

// Start writes the pooler's configuration and user list into a directory of its own, starts it on a free
// port, waits until it accepts connections (within [StartTimeout]) and stops it when t ends.
func Start(t testing.TB, cfg Config) *Bouncer {
	t.Helper()
	bin := binary()
	pgproc.Need(t, bin)
	pgproc.SweepOrphans(dirPrefix, stopOrphan)
	if cfg.ServerPort <= 0 {
		t.Fatal("pgbouncer: Config.ServerPort is required")
	}
	switch cfg.PoolMode {
	case "":
		cfg.PoolMode = TransactionMode
	case TransactionMode, SessionMode, StatementMode:
	default:
		t.Fatalf("pgbouncer: unknown pool mode %q", cfg.PoolMode)
	}
	dir, err := pgproc.MakeWorkDir(dirPrefix)
	if err != nil {
		t.Fatalf("pgbouncer: %v", err)
	}
	b := &Bouncer{t: t, bin: bin, dir: dir, ini: filepath.Join(dir, "pgbouncer.ini"), log: filepath.Join(dir, "pgbouncer.log")}
	t.Cleanup(b.cleanup)
	userlist := filepath.Join(dir, "userlist.txt")
	if err := os.WriteFile(userlist, []byte(`"postgres" ""`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if b.port, err = pgproc.FreePort(); err != nil {
			break
		}
		if err = os.WriteFile(b.ini, []byte(iniFile(cfg, dir, userlist, b.port)), 0o600); err != nil {
			break
		}
		if err = pgproc.Chown(b.ini, userlist); err != nil {
			break
		}
		if err = b.start(); err == nil {
			return b
		}
		if !strings.Contains(err.Error()+pgproc.Tail(b.log, 20), "Address already in use") {
			break
		}
	}
	t.Fatalf("pgbouncer: %v\n--- log tail (%s):\n%s", err, b.log, b.LogTail())
	return nil
}

func binary() string {
	if p := os.Getenv(EnvBinary); p != "" {
		return p
	}
	if _, err := os.Stat("/usr/sbin/pgbouncer"); err == nil {
		return "/usr/sbin/pgbouncer"
	}
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p
	}
	return "/usr/sbin/pgbouncer"
}

// iniFile returns the configuration: every database name maps to the same name on the server.
func iniFile(cfg Config, dir, userlist string, port int) string {
	host := cfg.ServerHost
	if host == "" {
		host = "127.0.0.1"
	}
	settings := map[string]string{
		"listen_addr":               "127.0.0.1",
		"listen_port":               strconv.Itoa(port),
		"unix_socket_dir":           "", // none: the port is enough, and a socket of ours could clash
		"auth_type":                 "trust",
		"auth_file":                 userlist,
		"admin_users":               "postgres",
		"stats_users":               "postgres",
		"pool_mode":                 string(cfg.PoolMode),
		"default_pool_size":         strconv.Itoa(orDefault(cfg.PoolSize, 4)),
		"max_client_conn":           strconv.Itoa(orDefault(cfg.MaxClientConn, 200)),
		"ignore_startup_parameters": "extra_float_digits",
		"server_reset_query":        "DISCARD ALL",
		"server_login_retry":        "1", // seconds before reconnecting to a server that refused: 15 by default
		"logfile":                   filepath.Join(dir, "pgbouncer.log"),
		"pidfile":                   filepath.Join(dir, "pgbouncer.pid"),
	}
	for k, v := range cfg.Settings {
		settings[k] = v
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "; Written by internal/pgbouncer.\n[databases]\n* = host=%s port=%d\n\n[pgbouncer]\n", host, cfg.ServerPort)
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(&sb, "%s = %s\n", k, settings[k])
	}
	return sb.String()
}

func orDefault(n, def int) int {
	if n <= 0 {
		return def
	}
	return n
}

// start runs the pooler and waits until its admin console answers.
func (b *Bouncer) start() error {
	cmd := exec.Command(b.bin, b.ini)
	if err := pgproc.AsPostgres(cmd); err != nil {
		return err
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// If the test binary dies before its cleanup, the pooler dies with it. (Go sets this after switching
	// user, which is why the pooler is not started with its own -u option: a setuid clears it.)
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	cmd.Dir = b.dir
	out, err := os.OpenFile(filepath.Join(b.dir, "stderr.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	b.cmd, b.exited = cmd, exited

	ctx, cancel := context.WithTimeout(context.Background(), StartTimeout)
	defer cancel()
	var last error
	for {
		if _, last = b.Admin(ctx, "SHOW VERSION"); last == nil {
			return nil
		}
		select {
		case <-exited:
			stderr, _ := os.ReadFile(filepath.Join(b.dir, "stderr.log"))
			return fmt.Errorf("pgbouncer exited at start (%v)\n%s", cmd.ProcessState, stderr)
		case <-ctx.Done():
			b.kill()
			return fmt.Errorf("pgbouncer did not accept connections within %v: %v", StartTimeout, last)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Port returns the port the pooler listens on, on 127.0.0.1. It stays the same across [Bouncer.Restart].
func (b *Bouncer) Port() int { return b.port }

// DSN returns a connection string for database db through the pooler, as user postgres.
func (b *Bouncer) DSN(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", b.port, url.PathEscape(db))
}

// Admin runs one command on the pooler's admin console (database pgbouncer, simple protocol), such as
// SHOW POOLS, PAUSE, RESUME or RECONNECT, and returns the rows it answered, each a map from column name to
// value (NULL as ""). ctx bounds the connection and the command: PAUSE, for one, waits until every server
// connection is released.
func (b *Bouncer) Admin(ctx context.Context, command string) ([]map[string]string, error) {
	conn, err := pgconn.Connect(ctx, b.DSN("pgbouncer"))
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	results, err := conn.Exec(ctx, command).ReadAll()
	if err != nil {
		return nil, err
	}
	var rows []map[string]string
	for _, r := range results {
		for _, values := range r.Rows {
			row := make(map[string]string, len(values))
			for k, fd := range r.FieldDescriptions {
				row[fd.Name] = string(values[k])
			}
			rows = append(rows, row)
		}
	}
	return rows, nil
}

// Stop shuts the pooler down (SIGTERM: its immediate shutdown, clients disconnected) and waits until it has
// exited, killing it if it has not within StartTimeout. Stopping a stopped pooler does nothing.
func (b *Bouncer) Stop() {
	b.t.Helper()
	if err := b.stop(syscall.SIGTERM); err != nil {
		b.t.Fatal(err)
	}
}

// Kill kills the pooler with SIGKILL, as a crash would, and waits until it has exited.
func (b *Bouncer) Kill() {
	b.t.Helper()
	if err := b.stop(syscall.SIGKILL); err != nil {
		b.t.Fatal(err)
	}
}

// Restart stops the pooler if it runs and starts it again on the same port, with the same configuration.
func (b *Bouncer) Restart() {
	b.t.Helper()
	b.Stop()
	if err := b.start(); err != nil {
		b.t.Fatalf("pgbouncer: restart: %v\n--- log tail (%s):\n%s", err, b.log, b.LogTail())
	}
}

// LogTail returns the last 40 lines of the pooler's log, for failure messages.
func (b *Bouncer) LogTail() string { return pgproc.Tail(b.log, 40) }

func (b *Bouncer) stop(sig syscall.Signal) error {
	if b.cmd == nil {
		return nil
	}
	select {
	case <-b.exited:
		return nil
	default:
	}
	_ = b.cmd.Process.Signal(sig)
	select {
	case <-b.exited:
		return nil
	case <-time.After(StartTimeout):
	}
	b.kill()
	select {
	case <-b.exited:
		return fmt.Errorf("pgbouncer: did not stop within %v of %v; killed", StartTimeout, sig)
	case <-time.After(5 * time.Second):
		return errors.New("pgbouncer: still running after SIGKILL")
	}
}

func (b *Bouncer) kill() { _ = b.cmd.Process.Kill() }

func (b *Bouncer) cleanup() {
	err := b.stop(syscall.SIGTERM)
	if rmErr := os.RemoveAll(b.dir); err == nil {
		err = rmErr
	}
	if err != nil {
		b.t.Errorf("pgbouncer: cleanup of %s: %v", b.dir, err)
	}
}

// stopOrphan kills the pooler of an orphaned directory, if one still runs.
func stopOrphan(dir string) {
	if p, ok := pgproc.ReadPIDFile(filepath.Join(dir, "pgbouncer.pid"), filepath.Join(dir, "pgbouncer.ini")); ok {
		_ = pgproc.KillTree(p, 5*time.Second)
	}
}
