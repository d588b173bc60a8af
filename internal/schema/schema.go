// Package schema holds pgcc's own SQL migrations and the names they live under.
//
// The files are golang-migrate's NNNN_name.up.sql / .down.sql layout. Package migrations (its own module, so
// that golang-migrate stays out of the graph of a service that never imports it) applies them with
// golang-migrate. [Apply] applies them without it, for the test harness and the public test kit, which build
// a migrated template database: it records the version in the same table, in golang-migrate's format, so
// that migrations.Up later sees the schema as current.
package schema

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Name is the PostgreSQL schema that holds every object pgcc creates.
const Name = "pgcc"

// VersionTable is the name, inside [Name], of the table recording the applied migration version.
const VersionTable = "schema_migrations"

// LockKey is the transaction-scoped advisory lock key that serialises creating the schema (and [Apply]). It
// is the first eight bytes of "pgcc.mig" read as a big-endian integer. docs/pessimistic.md lists it among the
// keys pgcc reserves.
const LockKey int64 = 0x706763632e6d6967

//go:embed sql/*.sql
var files embed.FS

// FS returns the migration files, at the root of the returned file system.
func FS() fs.FS {
	sub, err := fs.Sub(files, "sql")
	if err != nil {
		// fs.Sub fails only on an invalid path, and "sql" is a constant valid one.
		panic(err)
	}
	return sub
}

// Migration is one numbered step.
type Migration struct {
	Version uint
	Name    string
	Up      string
}

// Migrations returns the embedded steps in version order.
func Migrations() ([]Migration, error) {
	entries, err := fs.ReadDir(FS(), ".")
	if err != nil {
		return nil, err
	}
	var out []Migration
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".up.sql")
		if !ok {
			continue
		}
		num, rest, _ := strings.Cut(name, "_")
		v, err := strconv.ParseUint(num, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("migration file %s: %w", e.Name(), err)
		}
		body, err := fs.ReadFile(FS(), e.Name())
		if err != nil {
			return nil, err
		}
		out = append(out, Migration{Version: uint(v), Name: rest, Up: string(body)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// Latest returns the highest version among the embedded migrations.
func Latest() (uint, error) {
	ms, err := Migrations()
	if err != nil || len(ms) == 0 {
		return 0, err
	}
	return ms[len(ms)-1].Version, nil
}

// Apply brings the database behind conn to the latest version in one transaction, serialised with other
// callers by the advisory lock [LockKey], and records the version as golang-migrate does (one row of
// version and dirty in "pgcc"."schema_migrations"). It is meant for building test databases; services use
// package migrations. Running it at the same time as golang-migrate on the same database is not safe: the
// two take different locks. ctx bounds every statement.
func Apply(ctx context.Context, conn *pgx.Conn) error {
	ms, err := Migrations()
	if err != nil {
		return err
	}
	table := pgx.Identifier{Name, VersionTable}.Sanitize()
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", LockKey); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+pgx.Identifier{Name}.Sanitize()); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+table+" (version bigint NOT NULL PRIMARY KEY, dirty boolean NOT NULL)"); err != nil {
			return err
		}
		var current int64
		var dirty bool
		err := tx.QueryRow(ctx, "SELECT version, dirty FROM "+table).Scan(&current, &dirty)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			current = 0
		case err != nil:
			return err
		case dirty:
			return fmt.Errorf("pgcc schema: version %d is dirty: a migration failed half-way; fix it by hand", current)
		}
		applied := current
		for _, m := range ms {
			if int64(m.Version) <= current {
				continue
			}
			if _, err := tx.Exec(ctx, m.Up); err != nil {
				return fmt.Errorf("pgcc schema: migration %d (%s): %w", m.Version, m.Name, err)
			}
			applied = int64(m.Version)
		}
		if applied == current {
			return nil
		}
		if _, err := tx.Exec(ctx, "DELETE FROM "+table); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "INSERT INTO "+table+" (version, dirty) VALUES ($1, false)", applied)
		return err
	})
}
