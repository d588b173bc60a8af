// Package pgproc holds what internal/pginstance and internal/pgbouncer share to run server processes of a
// test's own: finding binaries, free loopback ports, running commands as the postgres user when the tests
// run as root, telling processes apart by pid and start time, killing a process tree, and sweeping the
// directories (and processes) left by a test binary that died without cleaning up.
//
// It reads /proc, so it works on Linux only; elsewhere [Need] skips the test.
package pgproc

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// EnvBinDir names the environment variable that points at a directory of PostgreSQL server binaries
// (initdb, pg_ctl, postgres, pg_basebackup), when `pg_config --bindir` is not the one to use.
const EnvBinDir = "PGCC_PG_BINDIR"

// Port range for servers of the tests' own: below Linux's ephemeral range (32768–60999), from which a client's
// connect may take a port while a server that owns it is down.
const (
	portMin = 20000
	portMax = 32000
)

// Need skips t, or fails it when the CI environment variable is true, unless every check passes: the
// platform is Linux, each named binary exists, and, when running as root, a postgres user exists to run
// the servers as.
func Need(t testing.TB, binaries ...string) {
	t.Helper()
	var missing []string
	if runtime.GOOS != "linux" {
		missing = append(missing, "Linux (/proc)")
	}
	for _, b := range binaries {
		if _, err := os.Stat(b); err != nil {
			missing = append(missing, b)
		}
	}
	if os.Geteuid() == 0 {
		if _, err := user.Lookup("postgres"); err != nil {
			missing = append(missing, "a postgres user to run the servers as (the tests run as root)")
		}
	}
	if len(missing) == 0 {
		return
	}
	msg := fmt.Sprintf("needs %s", strings.Join(missing, ", "))
	if inCI() {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

func inCI() bool {
	v, err := strconv.ParseBool(os.Getenv("CI"))
	return err == nil && v
}

// BinDir returns the directory of the PostgreSQL server binaries: [EnvBinDir], else `pg_config --bindir`,
// else the newest /usr/lib/postgresql/*/bin, else the directory of initdb on PATH, else "".
func BinDir() string {
	if d := os.Getenv(EnvBinDir); d != "" {
		return d
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		if d := strings.TrimSpace(string(out)); d != "" {
			if _, err := os.Stat(filepath.Join(d, "initdb")); err == nil {
				return d
			}
		}
	}
	if dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin"); len(dirs) > 0 {
		newest, newestVersion := "", -1
		for _, d := range dirs {
			if v, err := strconv.Atoi(filepath.Base(filepath.Dir(d))); err == nil && v > newestVersion {
				newest, newestVersion = d, v
			}
		}
		if newest != "" {
			return newest
		}
	}
	if p, err := exec.LookPath("initdb"); err == nil {
		return filepath.Dir(p)
	}
	return ""
}

// FreePort returns a loopback TCP port in [20000, 32000) that was free a moment ago: it binds
// 127.0.0.1:port and closes it. Another process may still take it before the caller does.
func FreePort() (int, error) {
	for range 200 {
		port := portMin + rand.IntN(portMax-portMin)
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		_ = ln.Close()
		return port, nil
	}
	return 0, errors.New("pgproc: no free port in [20000, 32000) after 200 tries")
}

// AsPostgres makes cmd run as the postgres user when this process runs as root (PostgreSQL and PgBouncer
// refuse to run as root), and leaves it alone otherwise.
func AsPostgres(cmd *exec.Cmd) error {
	if os.Geteuid() != 0 {
		return nil
	}
	uid, gid, err := postgresIDs()
	if err != nil {
		return err
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uid, Gid: gid}
	return nil
}

// Chown gives the postgres user the paths (not recursively) when this process runs as root; otherwise it does
// nothing.
func Chown(paths ...string) error {
	if os.Geteuid() != 0 {
		return nil
	}
	uid, gid, err := postgresIDs()
	if err != nil {
		return err
	}
	for _, p := range paths {
		if err := os.Chown(p, int(uid), int(gid)); err != nil {
			return err
		}
	}
	return nil
}

func postgresIDs() (uid, gid uint32, err error) {
	u, err := user.Lookup("postgres")
	if err != nil {
		return 0, 0, fmt.Errorf("pgproc: running as root needs a postgres user to run servers as: %w", err)
	}
	uid64, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return 0, 0, err
	}
	gid64, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return 0, 0, err
	}
	return uint32(uid64), uint32(gid64), nil
}

// Proc identifies a process: its pid and its start time (in clock ticks since boot), so that a pid reused by
// another process is never mistaken for it.
type Proc struct {
	PID   int
	Start uint64
}

// stat is what /proc/<pid>/stat tells about a process.
type stat struct {
	state byte
	ppid  int
	start uint64
}

func readStat(pid int) (stat, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return stat{}, err
	}
	// The command name, in parentheses, may hold spaces and parentheses: the fields follow the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return stat{}, fmt.Errorf("pgproc: unreadable /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return stat{}, fmt.Errorf("pgproc: short /proc/%d/stat", pid)
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return stat{}, err
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return stat{}, err
	}
	return stat{state: f[0][0], ppid: ppid, start: start}, nil
}

// Find returns the running process with the given pid, or false if there is none (a zombie counts as none).
func Find(pid int) (Proc, bool) {
	st, err := readStat(pid)
	if err != nil || st.state == 'Z' || st.state == 'X' {
		return Proc{}, false
	}
	return Proc{PID: pid, Start: st.start}, true
}

// Self returns this process.
func Self() Proc {
	p, _ := Find(os.Getpid())
	return p
}

// Alive reports whether p is still running: same pid, same start time, not a zombie.
func (p Proc) Alive() bool {
	q, ok := Find(p.PID)
	return ok && q.Start == p.Start
}

// Cmdline returns p's command line, arguments joined by spaces, or "" once p has ended.
func (p Proc) Cmdline() string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(p.PID) + "/cmdline")
	if err != nil || !p.Alive() {
		return ""
	}
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
}

// Descendants returns p's children, their children and so on, as running now.
func (p Proc) Descendants() []Proc {
	entries, _ := os.ReadDir("/proc")
	children := map[int][]Proc{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := readStat(pid); err == nil && st.state != 'Z' {
			children[st.ppid] = append(children[st.ppid], Proc{PID: pid, Start: st.start})
		}
	}
	var out []Proc
	queue := []Proc{p}
	for len(queue) > 0 {
		q := queue[0]
		queue = queue[1:]
		for _, c := range children[q.PID] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// KillTree kills p and its descendants with SIGKILL and waits up to wait for them to be gone. p is stopped
// (SIGSTOP) first, so it cannot start a new child while its children are collected. Processes that are no
// longer the ones named (pid reused) are left alone.
func KillTree(p Proc, wait time.Duration) error {
	if !p.Alive() {
		return nil
	}
	_ = syscall.Kill(p.PID, syscall.SIGSTOP)
	all := append([]Proc{p}, p.Descendants()...)
	for _, q := range all {
		if q.Alive() {
			_ = syscall.Kill(q.PID, syscall.SIGKILL)
		}
	}
	deadline := time.Now().Add(wait)
	for _, q := range all {
		for q.Alive() {
			if time.Now().After(deadline) {
				return fmt.Errorf("pgproc: process %d still running %v after SIGKILL", q.PID, wait)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nil
}

// AwaitReaped waits up to wait until no process, zombie included, has the pid on the first line of the pid
// file at path (postmaster.pid). A killed process whose parent has ended lingers as a zombie until init reaps
// it, which some init processes do only every second or so; PostgreSQL counts a zombie postmaster as running
// and refuses to start on its data directory meanwhile. A missing file, or a pid held by a running process,
// returns at once: those are for the server to judge.
func AwaitReaped(path string, wait time.Duration) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return nil
	}
	deadline := time.Now().Add(wait)
	for {
		st, err := readStat(pid)
		if err != nil || st.state != 'Z' {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pgproc: process %d (from %s) is still a zombie after %v: its parent (init?) does not reap it", pid, path, wait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// ownerFile names the file in a work directory that records which test binary made it.
const ownerFile = "owner"

// MakeWorkDir creates a directory under the system's temporary directory whose name starts with prefix,
// records this process as its owner, and gives it to the postgres user when running as root, so servers
// running as postgres can reach what is inside. [SweepOrphans] removes it once its owner has ended.
func MakeWorkDir(prefix string) (string, error) {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		return "", err
	}
	self := Self()
	owner := fmt.Sprintf("%d %d\n", self.PID, self.Start)
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(owner), 0o644); err != nil {
		_ = os.RemoveAll(dir)
		return "", err
	}
	if err := Chown(dir); err != nil {
		_ = os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}

// SweepOrphans finds the work directories with the given prefix whose owning test binary has ended (killed by
// a watchdog, a timeout or a signal before its cleanup ran), calls stop on each (which kills the server
// running there, if any), and removes them. Directories whose owner is still running, or that have no owner
// file yet, are left alone.
func SweepOrphans(prefix string, stop func(dir string)) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), prefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue
		}
		var owner Proc
		if _, err := fmt.Sscan(string(b), &owner.PID, &owner.Start); err != nil || owner.Alive() {
			continue
		}
		stop(dir)
		_ = os.RemoveAll(dir)
	}
}

// ReadPIDFile returns the process whose pid is on the first line of path (a postmaster.pid or a pgbouncer
// pid file), if it is running and its command line contains mark, such as the data directory or the
// configuration file it was started with. The mark guards against a pid the system has since reused.
func ReadPIDFile(path, mark string) (Proc, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Proc{}, false
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil {
		return Proc{}, false
	}
	p, ok := Find(pid)
	if !ok || !strings.Contains(p.Cmdline(), mark) {
		return Proc{}, false
	}
	return p, true
}

// Tail returns the last n lines of the file at path, or a note saying why it could not be read.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
