package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// LimitedRole creates a login role that is not a superuser, may hold at most limit connections at once
// (CONNECTION LIMIT; -1 for none), and has every privilege on the tables and sequences of d's schemas public
// and pgcc, and returns a DSN that connects to d as that role. A connection past the limit is refused with
// FATAL 53300 (too_many_connections), as a server whose every slot is taken refuses one; superusers, which
// the harness connects as, are exempt from the limit.
//
// Roles belong to the whole server: the role is named after d (its name followed by "_role"), dropped when t
// ends, after the pools and connections opened through it are closed, and a sweep of leftover databases
// drops the roles named after them.
func (d *DB) LimitedRole(t testing.TB, limit int) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	name := d.Name + roleSuffix
	secret := make([]byte, 16)
	_, _ = rand.Read(secret)
	password := hex.EncodeToString(secret)
	admin, err := pgx.Connect(ctx, d.DSN)
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	defer admin.Close(context.WithoutCancel(ctx))
	role := pgx.Identifier{name}.Sanitize()
	// The password is hex: safe between quotes. CREATE ROLE takes no parameters.
	for _, stmt := range []string{
		"CREATE ROLE " + role + " LOGIN PASSWORD '" + password + "' CONNECTION LIMIT " + strconv.Itoa(limit),
		"GRANT USAGE ON SCHEMA public, pgcc TO " + role,
		"GRANT ALL ON ALL TABLES IN SCHEMA public, pgcc TO " + role,
		"GRANT ALL ON ALL SEQUENCES IN SCHEMA public, pgcc TO " + role,
	} {
		if _, err := admin.Exec(ctx, stmt); err != nil {
			t.Fatalf("pgtest: %s: %v", stmt, err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		admin, err := pgx.Connect(ctx, d.DSN)
		if err != nil {
			t.Errorf("pgtest: dropping role %s: %v", name, err)
			return
		}
		defer admin.Close(context.WithoutCancel(ctx))
		if _, err := admin.Exec(ctx, "DROP OWNED BY "+role); err != nil {
			t.Errorf("pgtest: dropping role %s: %v", name, err)
		}
		if _, err := admin.Exec(ctx, "DROP ROLE "+role); err != nil {
			t.Errorf("pgtest: dropping role %s: %v", name, err)
		}
	})
	return asRole(d.DSN, name, password)
}

// asRole returns dsn with its user and password replaced, in dsn's own form (URL or keyword/value).
func asRole(dsn, user, password string) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		if u, err := url.Parse(dsn); err == nil {
			u.User = url.UserPassword(user, password)
			return u.String()
		}
	}
	// Later keywords win; both values are plain identifiers and hex, needing no quotes.
	return dsn + " user=" + user + " password=" + password
}

// roleSuffix ends the name of a role that LimitedRole creates, after its database's.
const roleSuffix = "_role"
