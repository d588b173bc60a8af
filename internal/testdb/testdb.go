// Package testdb holds what the two database-per-test harnesses share: pgcc's own (internal/pgtest) and the
// public test kit of the pgcctest module. It finds a server, names, creates, drops and sweeps test databases,
// rewrites connection strings, and waits for a pool's connections to be released.
//
// It keeps no state: each harness owns its server, admin pool and template.
package testdb

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc/internal/pgserver"
	"github.com/pgcc/pgcc/internal/secret"
)

// Namer names the databases of one harness in one test binary: <prefix><unix seconds>_<run>_<pid>_<n>, so
// that a sweep can tell their age and run from the name alone.
type Namer struct {
	// Prefix starts every name; it ends with an underscore.
	Prefix string
	// Run identifies the run (see [RunID]).
	Run string
	seq atomicCounter
}

// Next returns a new name.
func (n *Namer) Next() string {
	return fmt.Sprintf("%s%d_%s_%d_%d", n.Prefix, time.Now().Unix(), n.Run, os.Getpid(), n.seq.add())
}

// ParseName reads the creation time and run out of a name [Namer] made with prefix.
func ParseName(prefix, name string) (created time.Time, run string, ok bool) {
	rest, found := strings.CutPrefix(name, prefix)
	if !found {
		return time.Time{}, "", false
	}
	parts := strings.Split(rest, "_")
	if len(parts) != 4 {
		return time.Time{}, "", false
	}
	secs, err := strconv.ParseInt(parts[0], 10, 64)
	if err != nil {
		return time.Time{}, "", false
	}
	return time.Unix(secs, 0), parts[1], true
}

// RunID is the environment variable env when it holds a plain token (up to 16 lower-case letters and
// digits), otherwise a random token for this binary alone.
func RunID(env string) string {
	if r := os.Getenv(env); r != "" && isToken(r) {
		return r
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func isToken(s string) bool {
	if len(s) > 16 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// Create creates the database name as a copy of template. The template must have no other session.
func Create(ctx context.Context, admin *pgxpool.Pool, name, template string) error {
	sql := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize() + " TEMPLATE " + pgx.Identifier{template}.Sanitize()
	if _, err := admin.Exec(ctx, sql); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// Drop drops name if it exists, terminating the sessions still connected to it.
func Drop(ctx context.Context, admin *pgxpool.Pool, name string) error {
	_, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	return err
}

// Sweep drops every database named with prefix whose name carries run (every run when run is empty) and that
// is older than minAge, and returns the names it dropped.
func Sweep(ctx context.Context, admin *pgxpool.Pool, prefix, run string, minAge time.Duration) ([]string, error) {
	return SweepNamed(ctx, admin, "SELECT datname FROM pg_database WHERE starts_with(datname, $1)", []any{prefix},
		func(name string) (created time.Time, nameRun string, ok bool) { return ParseName(prefix, name) },
		run, minAge, func(ctx context.Context, name string) error { return Drop(ctx, admin, name) })
}

// SweepNamed runs query (with args) for the names of things a harness created, and drops, with drop, each one
// whose name parse reads as carrying run (every run when run is empty) and older than minAge. It returns the
// names it dropped and every failure to drop one.
func SweepNamed(ctx context.Context, admin *pgxpool.Pool, query string, args []any,
	parse func(name string) (created time.Time, run string, ok bool), run string, minAge time.Duration,
	drop func(ctx context.Context, name string) error) ([]string, error) {
	rows, err := admin.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, err
	}
	var dropped []string
	var errs []error
	for _, name := range names {
		created, nameRun, ok := parse(name)
		if !ok || (run != "" && nameRun != run) || time.Since(created) < minAge {
			continue
		}
		if err := drop(ctx, name); err != nil {
			errs = append(errs, fmt.Errorf("drop %s: %w", name, err))
			continue
		}
		dropped = append(dropped, name)
	}
	return dropped, errors.Join(errs...)
}

// Server is a PostgreSQL server found by [FindServer].
type Server struct {
	// DSN connects to it as a role that may create databases.
	DSN string
	// Source says where it came from: the environment variable's name, "testcontainers" or "local server".
	Source string
	// Release stops what was started for it (a container); it does nothing for a server that was found.
	Release func()
}

// FindServer looks for a server in the harnesses' order: the connection string in the environment variable
// env; a container started by startContainer (when not nil) if a Docker engine answers; PostgreSQL on
// 127.0.0.1:5432 as postgres. The error of a failed search says how to provide a server.
func FindServer(ctx context.Context, env string, startContainer func(context.Context) (string, func(), error)) (Server, error) {
	noop := func() {}
	if dsn := os.Getenv(env); dsn != "" {
		return Server{DSN: dsn, Source: env, Release: noop}, nil
	}
	dockerErr := errors.New("no container starter")
	if startContainer != nil {
		dsn, release, err := startContainer(ctx)
		if err == nil {
			return Server{DSN: dsn, Source: "testcontainers", Release: release}, nil
		}
		dockerErr = err
	}
	if pgserver.Reachable(ctx, pgserver.LocalAddr) {
		return Server{DSN: pgserver.LocalDSN, Source: "local server", Release: noop}, nil
	}
	return Server{}, fmt.Errorf("no PostgreSQL server: set %s to a connection string for a role with "+
		"CREATEDB (e.g. postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable), start a Docker engine "+
		"for testcontainers (%v), or run PostgreSQL on 127.0.0.1:5432", env, dockerErr)
}

// WithDatabase returns dsn with its database replaced by name. It accepts the URL and the keyword/value forms
// pgx reads; in the second, a later keyword overrides an earlier one. label names the connection string's
// origin in errors, which never show its password.
func WithDatabase(label, dsn, name string) (string, error) {
	if _, err := pgx.ParseConfig(dsn); err != nil {
		return "", fmt.Errorf("%s: %w", label, secret.ParseError(err))
	}
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return "", fmt.Errorf("%s: %w", label, secret.ParseError(err))
		}
		u.Path = "/" + name
		u.RawPath = ""
		return u.String(), nil
	}
	return dsn + " dbname=" + name, nil
}

// Redact describes a connection string for messages, without its password.
func Redact(dsn string) string {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return "the configured server"
	}
	return fmt.Sprintf("%s@%s:%d/%s", cfg.User, cfg.Host, cfg.Port, cfg.Database)
}

// LeakGrace is how long [AwaitReleased] is usually given: pgxpool counts a broken connection as acquired
// until its destructor, which runs in the background, has closed it, and pgx bounds that close (a cancel
// request, then draining what the server still sends) by 15 s. On an idle machine it takes milliseconds; at a
// load average of 17 on two cores a cancel request's connection alone took seconds, and a 5 s grace reported
// connections as leaked that were released a little later.
const LeakGrace = 16 * time.Second

// AwaitReleased returns the number of connections still acquired from pool once none is, or once grace has
// passed.
func AwaitReleased(pool *pgxpool.Pool, grace time.Duration) int32 {
	deadline := time.Now().Add(grace)
	for {
		n := pool.Stat().AcquiredConns()
		if n == 0 || time.Now().After(deadline) {
			return n
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// atomicCounter counts from 1; its zero value is ready.
type atomicCounter struct{ n atomic.Int64 }

func (c *atomicCounter) add() int64 { return c.n.Add(1) }
