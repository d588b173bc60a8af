package lock_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc/internal/pgtest"
)

// forwarder is a TCP proxy on loopback in front of PostgreSQL that can stop forwarding: after Hang, bytes in
// either direction, on existing and new connections, are held back (the sockets stay open), as a network
// that silently drops everything would. It is the smallest tool the hung-connection tests need; the project's
// fault proxy (internal/faultnet) does more.
type forwarder struct {
	ln     net.Listener
	target string

	mu     sync.Mutex
	conns  []net.Conn
	hung   bool
	resume chan struct{} // closed when the forwarder closes
	closed bool
	wg     sync.WaitGroup
}

// startForwarder forwards a loopback port to target (host:port) until t ends.
func startForwarder(t testing.TB, target string) *forwarder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &forwarder{ln: ln, target: target, resume: make(chan struct{})}
	f.wg.Add(1)
	go f.accept()
	t.Cleanup(f.close)
	return f
}

func (f *forwarder) port() uint16 { return uint16(f.ln.Addr().(*net.TCPAddr).Port) }

func (f *forwarder) accept() {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", f.target)
		if err != nil {
			c.Close()
			continue
		}
		f.mu.Lock()
		if f.closed {
			f.mu.Unlock()
			c.Close()
			s.Close()
			return
		}
		f.conns = append(f.conns, c, s)
		f.wg.Add(2)
		f.mu.Unlock()
		go f.pipe(c, s)
		go f.pipe(s, c)
	}
}

func (f *forwarder) pipe(from, to net.Conn) {
	defer f.wg.Done()
	buf := make([]byte, 32<<10)
	for {
		n, err := from.Read(buf)
		if n > 0 {
			f.mu.Lock()
			hung, resume := f.hung, f.resume
			f.mu.Unlock()
			if hung {
				<-resume // held back until the forwarder closes
				return
			}
			if _, werr := to.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// hang stops all forwarding, for good.
func (f *forwarder) hang() {
	f.mu.Lock()
	f.hung = true
	f.mu.Unlock()
}

func (f *forwarder) close() {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.closed = true
	close(f.resume)
	f.ln.Close()
	for _, c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// viaForwarder points a pool configuration at f.
func viaForwarder(f *forwarder) func(*pgxpool.Config) {
	return func(c *pgxpool.Config) {
		c.ConnConfig.Host, c.ConnConfig.Port, c.ConnConfig.Fallbacks = "127.0.0.1", f.port(), nil
	}
}

// serverAddr is the host:port of the test server.
func serverAddr(t testing.TB, db *pgtest.DB) string {
	t.Helper()
	cfg, err := pgx.ParseConfig(db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))
}

// pgbouncerPath is the Debian package's binary.
const pgbouncerPath = "/usr/sbin/pgbouncer"

// startPgBouncer runs a PgBouncer of the test's own in front of the test server (any database, trust
// authentication as on the test server), in pool mode mode ("transaction" or "session"), on a free loopback
// port below 32768, and stops it when t ends. It skips the test when PgBouncer is not installed. PgBouncer
// refuses to run as root, so it runs as the postgres user.
func startPgBouncer(t testing.TB, db *pgtest.DB, mode string) uint16 {
	t.Helper()
	if _, err := os.Stat(pgbouncerPath); err != nil {
		t.Skipf("PgBouncer not installed (%s): %v", pgbouncerPath, err)
	}
	var credential *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Skipf("PgBouncer refuses to run as root and there is no postgres user: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		credential = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	cfg, err := pgx.ParseConfig(db.DSN)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "pgcc-pgbouncer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	for attempt := 0; attempt < 10; attempt++ {
		port := freePort(t)
		ini := fmt.Sprintf(`[databases]
* = host=%s port=%d

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
pool_mode = %s
default_pool_size = 4
max_client_conn = 500
server_reset_query = DISCARD ALL
ignore_startup_parameters = extra_float_digits
logfile = %s
`, cfg.Host, cfg.Port, port, filepath.Join(dir, "users.txt"), mode, filepath.Join(dir, "pgbouncer.log"))
		iniPath := filepath.Join(dir, "pgbouncer.ini")
		if err := os.WriteFile(iniPath, []byte(ini), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "users.txt"), []byte(`"postgres" ""`+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(pgbouncerPath, iniPath)
		// Pdeathsig: a test binary the watchdog ends with os.Exit runs no cleanup; PgBouncer must not outlive it.
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: credential, Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			t.Fatalf("start PgBouncer: %v", err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		if waitListening(port, exited) {
			t.Cleanup(func() {
				_ = cmd.Process.Signal(syscall.SIGINT)
				select {
				case <-exited:
				case <-time.After(10 * time.Second):
					_ = cmd.Process.Kill()
					<-exited
				}
			})
			return port
		}
		_ = cmd.Process.Kill()
		<-exited
	}
	log, _ := os.ReadFile(filepath.Join(dir, "pgbouncer.log"))
	t.Fatalf("PgBouncer did not start; its log:\n%s", log)
	return 0
}

// freePort returns a loopback TCP port below 32768 (outside Linux's ephemeral range) that was free a moment ago.
func freePort(t testing.TB) uint16 {
	t.Helper()
	for range 100 {
		port := 20000 + rand.IntN(12000)
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err == nil {
			ln.Close()
			return uint16(port)
		}
	}
	t.Fatal("no free port")
	return 0
}

func waitListening(port uint16, exited <-chan error) bool {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return false
		default:
		}
		c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))), time.Second)
		if err == nil {
			c.Close()
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// viaPgBouncer points a pool configuration at a PgBouncer on port, with the query exec mode given (PgBouncer
// 1.18 in transaction mode keeps no prepared statements, so pgx's default statement cache cannot work).
func viaPgBouncer(port uint16, mode pgx.QueryExecMode) func(*pgxpool.Config) {
	return func(c *pgxpool.Config) {
		c.ConnConfig.Host, c.ConnConfig.Port, c.ConnConfig.Fallbacks = "127.0.0.1", port, nil
		c.ConnConfig.DefaultQueryExecMode = mode
	}
}

// errorsAs is errors.As with the target made for the caller.
func errorsAs[E error](err error) (E, bool) {
	var target E
	ok := errors.As(err, &target)
	return target, ok
}
