package pgproc

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestFreePort(t *testing.T) {
	t.Parallel()
	for range 20 {
		port, err := FreePort()
		if err != nil {
			t.Fatal(err)
		}
		if port < portMin || port >= portMax {
			t.Fatalf("FreePort = %d, outside [%d, %d)", port, portMin, portMax)
		}
	}
}

// TestKillTree starts a shell with a child of its own, and kills both.
func TestKillTree(t *testing.T) {
	t.Parallel()
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", "-c", "sleep 60 & wait")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	// Between fork and exec the child's command line can still be empty (seen in CI): wait for the exec.
	shell, ok := Find(cmd.Process.Pid)
	for deadline := time.Now().Add(5 * time.Second); ok && !strings.Contains(shell.Cmdline(), "sleep 60") && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
		shell, ok = Find(cmd.Process.Pid)
	}
	if !ok || !shell.Alive() || !strings.Contains(shell.Cmdline(), "sleep 60") {
		t.Fatalf("Find(%d) = %+v, %v, command line %q", cmd.Process.Pid, shell, ok, shell.Cmdline())
	}
	var kids []Proc
	for deadline := time.Now().Add(5 * time.Second); len(kids) == 0; kids = shell.Descendants() {
		if time.Now().After(deadline) {
			t.Fatal("the shell's child never appeared")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := KillTree(shell, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	<-waited
	for _, k := range kids {
		if k.Alive() {
			t.Errorf("child %d survived KillTree", k.PID)
		}
	}
	if (Proc{PID: shell.PID, Start: shell.Start + 1}).Alive() {
		t.Error("a Proc with another start time counts as alive")
	}
}

func TestSweepOrphans(t *testing.T) {
	t.Parallel()
	if runtime.GOOS != "linux" {
		t.Skip("reads /proc")
	}
	prefix := fmt.Sprintf("pgcc-pgproc-test-%d-", os.Getpid())
	mine, err := MakeWorkDir(prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(mine)
	orphan, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(orphan)
	self := Self()
	// Same pid, another start time: an owner that has ended.
	if err := os.WriteFile(filepath.Join(orphan, ownerFile), fmt.Appendf(nil, "%d %d\n", self.PID, self.Start+1), 0o644); err != nil {
		t.Fatal(err)
	}
	var stopped []string
	SweepOrphans(prefix, func(dir string) { stopped = append(stopped, dir) })
	if len(stopped) != 1 || stopped[0] != orphan {
		t.Errorf("stopped %q, want only %q", stopped, orphan)
	}
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Errorf("the orphan directory is still there (%v)", err)
	}
	if _, err := os.Stat(mine); err != nil {
		t.Errorf("the live owner's directory is gone: %v", err)
	}
}

func TestTail(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(path, []byte("a\nb\nc\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := Tail(path, 2); got != "b\nc" {
		t.Errorf("Tail = %q", got)
	}
	if got := Tail(filepath.Join(t.TempDir(), "none"), 2); !strings.HasPrefix(got, "(no log") {
		t.Errorf("Tail of a missing file = %q", got)
	}
}
