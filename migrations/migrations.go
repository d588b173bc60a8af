// Package migrations applies pgcc's own database objects with golang-migrate.
//
// Everything pgcc stores lives in the PostgreSQL schema [Schema] ("pgcc"). The migration files are embedded in
// the binary and applied by golang-migrate through its pgx/v5 driver, with a version table of its own,
// "pgcc"."schema_migrations" ([VersionTable]). A service that manages its own schema with golang-migrate keeps
// its own "public"."schema_migrations" and its own migration lock; the two never see each other.
//
// Two features need these objects: leases (package lease, the table "pgcc"."leases") and idempotency keys
// (txn.WithIdempotencyKey, the table "pgcc"."idempotency_keys"). Row locks, advisory locks, optimistic updates
// and retrying transactions without a key work on any database without them.
//
// migrations is a Go module of its own (github.com/pgcc/pgcc/migrations), so that golang-migrate and its
// dependencies enter the module graph only of a service that imports it.
//
// # Concurrency
//
// [Up] may be called by several processes at once, typically each replica of a service at start-up. Creating
// the schema is serialised by a transaction-scoped advisory lock, and golang-migrate serialises the migrations
// themselves with a session advisory lock keyed by database, schema and table name. The second caller waits
// for the first and then finds nothing to do.
//
// # Layering
//
// migrations imports pgx, golang-migrate and the migration files themselves (kept in the main module, where
// the test harness applies them to its template database without golang-migrate). No other pgcc package
// imports it.
package migrations

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"

	"github.com/golang-migrate/migrate/v4"
	"github.com/golang-migrate/migrate/v4/database"
	migratepgx "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/pgcc/pgcc/internal/schema"
	"github.com/pgcc/pgcc/internal/secret"
)

// Schema is the PostgreSQL schema that holds every object pgcc creates.
const Schema = schema.Name

// VersionTable is the name, inside [Schema], of the table golang-migrate records pgcc's schema version in.
const VersionTable = schema.VersionTable

// schemaLockKey is the transaction-scoped advisory lock key that serialises CREATE SCHEMA between concurrent
// callers of Up. It is the first eight bytes of "pgcc.mig" read as a big-endian integer, so that it is
// unlikely to collide with an application's own keys.
const schemaLockKey = schema.LockKey

// FS returns the embedded migration files (golang-migrate's NNNN_name.up.sql / .down.sql layout, at the
// root of the returned file system), for teams that run migrations with their own tooling. Such tooling must
// use "pgcc"."schema_migrations" as its version table, or pgcc's versions will mix with the application's.
func FS() fs.FS { return schema.FS() }

// Up applies every pending migration to the database behind pool. It returns nil when the schema is already
// current.
//
// ctx bounds creating the schema and stops the migration run between two migration files; golang-migrate
// cannot interrupt a single statement or its own wait for the migration lock, so a cancelled Up returns once
// the step in progress has finished. Up uses at most two connections of the pool at once and returns both.
func Up(ctx context.Context, pool *pgxpool.Pool) error {
	return run(ctx, pool, func(m *migrate.Migrate) error { return m.Up() })
}

// UpDSN is [Up] on a short-lived pool opened from a connection string (a URL or a keyword/value DSN, as
// [pgxpool.ParseConfig] reads them). The pool is closed before UpDSN returns.
func UpDSN(ctx context.Context, dsn string) error {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return fmt.Errorf("pgcc migrations: %w", secret.ParseError(err))
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("pgcc migrations: connect: %w", err)
	}
	defer pool.Close()
	return Up(ctx, pool)
}

// Down reverts the most recently applied migration, one step, as golang-migrate's "down 1". Reverting the
// second migration drops the idempotency keys (every key is forgotten), reverting the first the lease table
// and with it every lease. It returns nil when nothing is applied.
func Down(ctx context.Context, pool *pgxpool.Pool) error {
	return run(ctx, pool, func(m *migrate.Migrate) error {
		if _, _, err := m.Version(); errors.Is(err, migrate.ErrNilVersion) {
			return nil
		}
		return m.Steps(-1)
	})
}

// Version reports the applied migration version and whether a failed migration left the schema dirty.
// Version is 0 when no pgcc migration has been applied.
func Version(ctx context.Context, pool *pgxpool.Pool) (version uint, dirty bool, err error) {
	err = run(ctx, pool, func(m *migrate.Migrate) error {
		v, d, verr := m.Version()
		if errors.Is(verr, migrate.ErrNilVersion) {
			return nil
		}
		version, dirty = v, d
		return verr
	})
	return version, dirty, err
}

func run(ctx context.Context, pool *pgxpool.Pool, step func(*migrate.Migrate) error) (err error) {
	if err := ensureSchema(ctx, pool); err != nil {
		return err
	}
	src, err := iofs.New(schema.FS(), ".")
	if err != nil {
		return fmt.Errorf("pgcc migrations: open embedded files: %w", err)
	}
	db := stdlib.OpenDBFromPool(pool)
	defer db.Close()
	driver, err := withInstance(ctx, db)
	if err != nil {
		return fmt.Errorf("pgcc migrations: open driver: %w", err)
	}
	m, err := migrate.NewWithInstance("iofs", src, "pgx5", driver)
	if err != nil {
		return fmt.Errorf("pgcc migrations: %w", err)
	}
	defer func() {
		srcErr, dbErr := m.Close()
		if err == nil && (srcErr != nil || dbErr != nil) {
			err = fmt.Errorf("pgcc migrations: close: %w", errors.Join(srcErr, dbErr))
		}
	}()

	// Translate ctx cancellation into golang-migrate's graceful stop, which it checks between migrations.
	stopped := make(chan struct{})
	defer close(stopped)
	go func() {
		select {
		case <-ctx.Done():
			select {
			case m.GracefulStop <- true:
			case <-stopped:
			}
		case <-stopped:
		}
	}()

	err = step(m)
	if errors.Is(err, migrate.ErrNoChange) {
		err = nil
	}
	if err == nil && ctx.Err() != nil {
		err = ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("pgcc migrations: %w", err)
	}
	return nil
}

func withInstance(ctx context.Context, db *sql.DB) (database.Driver, error) {
	if err := db.PingContext(ctx); err != nil {
		return nil, err
	}
	return migratepgx.WithInstance(db, &migratepgx.Config{
		MigrationsTable:       pgx.Identifier{Schema, VersionTable}.Sanitize(),
		MigrationsTableQuoted: true,
	})
}

// ensureSchema creates [Schema] if it is missing. CREATE SCHEMA IF NOT EXISTS is not safe against a concurrent
// CREATE SCHEMA of the same name (one of them fails on the catalog's unique index), so callers queue on an
// advisory lock held until commit.
func ensureSchema(ctx context.Context, pool *pgxpool.Pool) error {
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", schemaLockKey); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{Schema}.Sanitize())
		return err
	})
	if err != nil {
		return fmt.Errorf("pgcc migrations: create schema %q: %w", Schema, err)
	}
	return nil
}
