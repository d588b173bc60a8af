// Package pgserver finds a PostgreSQL server to work against when the caller gave none: a server on
// 127.0.0.1:5432, or a disposable container when a Docker engine answers. The container is started by the
// command pgcc-postgres of the pgcctest module, run with `go run`, so that testcontainers-go stays out of
// the main module's dependencies; the test harness (internal/pgtest) uses it.
package pgserver

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// LocalAddr is where a development machine's PostgreSQL listens.
const LocalAddr = "127.0.0.1:5432"

// LocalDSN connects to the server on [LocalAddr] as postgres, the way the development machines and CI are set
// up (trust authentication on loopback).
const LocalDSN = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// Reachable reports whether a TCP connection to addr opens within 2 seconds (or ctx's end).
func Reachable(ctx context.Context, addr string) bool {
	var d net.Dialer
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}

// DockerAvailable asks the Docker engine for /_ping, at DOCKER_HOST when it names a unix socket, else at
// /var/run/docker.sock, giving up after 2 seconds. It returns nil when the engine answers.
func DockerAvailable(ctx context.Context) error {
	sock := "/var/run/docker.sock"
	if h := os.Getenv("DOCKER_HOST"); h != "" {
		path, ok := strings.CutPrefix(h, "unix://")
		if !ok {
			return fmt.Errorf("docker: DOCKER_HOST %q is not a unix socket; use pgcctest directly", h)
		}
		sock = path
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	defer client.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://docker/_ping", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("docker engine not answering at %s: %w", sock, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("docker engine at %s answered %s", sock, resp.Status)
	}
	return nil
}

// StartContainer runs pgcc-postgres (pgcctest/cmd/pgcc-postgres, with `go run` in the pgcctest module of
// this source tree) and returns the connection string it prints. release closes the command's standard
// input, which stops the container, and waits for it. ctx bounds the start (pulling the image included).
func StartContainer(ctx context.Context) (dsn string, release func(), err error) {
	if err := DockerAvailable(ctx); err != nil {
		return "", nil, err
	}
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", nil, errors.New("cannot locate the source tree")
	}
	dir := filepath.Join(filepath.Dir(file), "..", "..", "pgcctest")
	cmd := exec.Command("go", "run", "./cmd/pgcc-postgres")
	cmd.Dir = dir
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return "", nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", nil, err
	}
	if err := cmd.Start(); err != nil {
		return "", nil, err
	}
	release = func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	}
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- strings.TrimSpace(s)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case dsn = <-line:
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		release()
		return "", nil, fmt.Errorf("starting a PostgreSQL container: %w", ctx.Err())
	}
	if dsn == "" {
		release()
		return "", nil, errors.New("pgcc-postgres did not start a container (its error is above)")
	}
	return dsn, release, nil
}
