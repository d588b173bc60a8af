package pgcctest

import (
	"context"

	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pgcc/pgcc/internal/schema"
	"github.com/pgcc/pgcc/internal/testdb"
)

// EnvDatabaseURL names the environment variable that points the kit at a server: a connection string for a
// role that may create databases. It is the variable pgcc's own tests read.
const EnvDatabaseURL = "PGCC_TEST_DATABASE_URL"

// EnvRun names the environment variable carrying a token shared by the test binaries of one run (up to 16
// lower-case letters and digits), written into every database name so that a script can sweep what a killed
// run left behind.
const EnvRun = "PGCCTEST_RUN"

// Prefix starts the name of every database the kit creates: pgcctest_<unix seconds>_<run>_<pid>_<n>.
const Prefix = "pgcctest_"

// staleAfter is the age past which a database with [Prefix] is taken for a leftover of a killed run and
// dropped by [Start].
const staleAfter = 2 * time.Hour

// Option configures [Start] and [Main].
type Option func(*config)

type config struct {
	dsn        string
	noPgcc     bool
	setups     []func(ctx context.Context, dsn string) error
	startTimer time.Duration
}

// DatabaseURL makes the kit use the server dsn names instead of searching for one.
func DatabaseURL(dsn string) Option { return func(c *config) { c.dsn = dsn } }

// Setup adds a function that prepares the template database once, after pgcc's own schema: apply the
// service's migrations (golang-migrate, goose, tern, …) or load fixtures through dsn, which connects to the
// template. Every session it opened must be closed when it returns, since PostgreSQL copies a template only
// while nobody is connected to it. Setups run in the order given.
func Setup(fn func(ctx context.Context, dsn string) error) Option {
	return func(c *config) { c.setups = append(c.setups, fn) }
}

// SQL adds a Setup that runs sql (any number of statements separated by semicolons, sent as one simple query)
// on the template.
func SQL(sql string) Option {
	return Setup(func(ctx context.Context, dsn string) error {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			return err
		}
		defer conn.Close(context.WithoutCancel(ctx))
		_, err = conn.Exec(ctx, sql)
		return err
	})
}

// WithoutPgccSchema leaves pgcc's own schema (leases, idempotency keys, applied by the migrations module) out
// of the template, for services that use neither.
func WithoutPgccSchema() Option { return func(c *config) { c.noPgcc = true } }

// StartTimeout bounds finding the server, starting a container (pulling its image included) and building the
// template. The default is two minutes.
func StartTimeout(d time.Duration) Option { return func(c *config) { c.startTimer = d } }

// Server is a PostgreSQL server with a template database: pgcc's schema and the service's own, applied once.
// Every database of a test is a copy of the template. A Server is safe for concurrent use.
type Server struct {
	dsn      string
	source   string
	release  func()
	admin    *pgxpool.Pool
	template string
	names    testdb.Namer
}

// Start finds a server, in this order: [DatabaseURL], the environment variable [EnvDatabaseURL], a container
// started with testcontainers-go ([StartContainer]) when a Docker engine answers, PostgreSQL on 127.0.0.1:5432
// as postgres. It drops databases of earlier runs older than two hours, then builds the template: pgcc's
// migrations (unless [WithoutPgccSchema]; the files and version table of the migrations module, applied
// without golang-migrate) and each [Setup] in order. [Server.Close] drops the template and
// stops the container.
func Start(ctx context.Context, opts ...Option) (*Server, error) {
	cfg := config{startTimer: 2 * time.Minute}
	for _, o := range opts {
		o(&cfg)
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.startTimer)
	defer cancel()
	var srv testdb.Server
	if cfg.dsn != "" {
		srv = testdb.Server{DSN: cfg.dsn, Source: "DatabaseURL", Release: func() {}}
	} else {
		var err error
		if srv, err = testdb.FindServer(ctx, EnvDatabaseURL, StartContainer); err != nil {
			return nil, fmt.Errorf("pgcctest: %w", err)
		}
	}
	admin, err := pgxpool.New(ctx, srv.DSN)
	if err == nil {
		err = admin.Ping(ctx)
	}
	if err != nil {
		if admin != nil {
			admin.Close()
		}
		srv.Release()
		return nil, fmt.Errorf("pgcctest: connect to %s (%s): %w", testdb.Redact(srv.DSN), srv.Source, err)
	}
	s := &Server{dsn: srv.DSN, source: srv.Source, release: srv.Release, admin: admin,
		names: testdb.Namer{Prefix: Prefix, Run: testdb.RunID(EnvRun)}}
	if _, err := testdb.Sweep(ctx, admin, Prefix, "", staleAfter); err != nil {
		fmt.Fprintf(os.Stderr, "pgcctest: sweeping stale databases: %v\n", err)
	}
	if err := s.buildTemplate(ctx, &cfg); err != nil {
		s.Close()
		return nil, fmt.Errorf("pgcctest: build the template database: %w", err)
	}
	return s, nil
}

// applyPgccSchema applies pgcc's migrations to the database dsn names with internal/schema: the files the
// migrations module embeds, recorded in "pgcc"."schema_migrations" as golang-migrate records them (so that
// migrations.Up run by the code under test finds the schema current), without golang-migrate and its
// dependencies entering the module graph of every service's tests.
func applyPgccSchema(ctx context.Context, dsn string) error {
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return schema.Apply(ctx, conn)
}

func (s *Server) buildTemplate(ctx context.Context, cfg *config) error {
	name := s.names.Next()
	if err := testdb.Create(ctx, s.admin, name, "template0"); err != nil {
		return err
	}
	s.template = name
	dsn, err := testdb.WithDatabase(s.source, s.dsn, name)
	if err != nil {
		return err
	}
	if !cfg.noPgcc {
		if err := applyPgccSchema(ctx, dsn); err != nil {
			return fmt.Errorf("pgcc schema: %w", err)
		}
	}
	for i, setup := range cfg.setups {
		if err := setup(ctx, dsn); err != nil {
			return fmt.Errorf("setup %d: %w", i+1, err)
		}
	}
	return nil
}

// Source says where the server came from: "DatabaseURL", the environment variable's name, "testcontainers"
// or "local server".
func (s *Server) Source() string { return s.source }

// Template returns the name of the template database every test database is copied from.
func (s *Server) Template() string { return s.template }

// Close drops the template, closes the administrative pool and stops the container, if one was started.
// Databases still open are left to their own cleanup.
func (s *Server) Close() {
	if s.template != "" {
		s.drop(s.template)
	}
	s.admin.Close()
	s.release()
}

// drop drops name on a context of its own: it runs during cleanup, when the test's context may have ended.
func (s *Server) drop(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := testdb.Drop(ctx, s.admin, name); err != nil {
		fmt.Fprintf(os.Stderr, "pgcctest: drop database %s: %v\n", name, err)
	}
}

// CreateDB creates a database from the template. The caller drops it with [DB.Drop]; tests use
// [Server.NewDB], which does so when the test ends.
func (s *Server) CreateDB(ctx context.Context) (*DB, error) {
	name := s.names.Next()
	// A session left on the template (a Setup that leaked one) would make every copy fail.
	if err := testdb.Create(ctx, s.admin, name, s.template); err != nil {
		return nil, fmt.Errorf("pgcctest: %w", err)
	}
	dsn, err := testdb.WithDatabase(s.source, s.dsn, name)
	if err != nil {
		s.drop(name)
		return nil, fmt.Errorf("pgcctest: %w", err)
	}
	return &DB{Name: name, DSN: dsn, srv: s}, nil
}

// NewDB creates a database for t from the template (a CREATE DATABASE … TEMPLATE copy, tens of milliseconds)
// and drops it when t ends, after the pools and connections opened through it are closed. Tests that each
// take their own database may call t.Parallel freely.
func (s *Server) NewDB(t testing.TB) *DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := s.CreateDB(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.drop(db.Name) })
	return db
}

// The server [Main] started for the test binary. testing.M gives TestMain no way to hand a value to the
// tests, so this is the package's one piece of state; code that wants none calls [Start] itself and passes
// the *Server around.
var (
	mainMu     sync.Mutex
	mainCalled bool
	mainServer *Server
	mainErr    error
)

// Main is the body of a test package's TestMain:
//
//	func TestMain(m *testing.M) {
//		pgcctest.Main(m, pgcctest.Setup(applyMigrations))
//	}
//
// It starts a [Server] with opts, runs the tests, closes the server and exits with the tests' status. When no
// server can be found, tests that ask for a database are skipped with a message that says how to provide one,
// or fail when the CI environment variable holds a true value; the package's other tests run either way.
func Main(m *testing.M, opts ...Option) {
	os.Exit(run(m, opts))
}

func run(m *testing.M, opts []Option) int {
	s, err := Start(context.Background(), opts...)
	mainMu.Lock()
	mainCalled, mainServer, mainErr = true, s, err
	mainMu.Unlock()
	if s != nil {
		defer s.Close()
	}
	return m.Run()
}

// Default returns the server [Main] started, failing t when Main was not called, and skipping it (failing it
// in CI) when Main found no server.
func Default(t testing.TB) *Server {
	t.Helper()
	mainMu.Lock()
	s, err, called := mainServer, mainErr, mainCalled
	mainMu.Unlock()
	switch {
	case !called:
		t.Fatal("pgcctest: the package has no TestMain calling pgcctest.Main(m)")
	case err != nil && inCI():
		t.Fatal(err)
	case err != nil:
		t.Skip(err)
	}
	return s
}

// NewDB is Default(t).NewDB(t): a database of t's own on the server [Main] started.
func NewDB(t testing.TB) *DB {
	t.Helper()
	return Default(t).NewDB(t)
}

// Pool is NewDB(t).Pool(t, configure...): a pool on a fresh database of t's own.
func Pool(t testing.TB, configure ...func(*pgxpool.Config)) *pgxpool.Pool {
	t.Helper()
	return NewDB(t).Pool(t, configure...)
}

func inCI() bool {
	v, err := strconv.ParseBool(os.Getenv("CI"))
	return err == nil && v
}
