package secret_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pgcc/pgcc/internal/secret"
)

func TestParseErrorNeverShowsThePassword(t *testing.T) {
	for _, dsn := range []string{
		"postgresql+psycopg://app:s3cr@t@db.internal/orders",
		"postgress://app:s3cret@db.internal/orders",
		"mysql://app:s3cret@db.internal/orders",
		"postgres://app:s3cret@db.internal:99999/orders",
		"postgres://app:s3cret@db.internal/orders?sslmode=bogus",
		"host=db.internal password='s3 cret' sslmode=bogus",
		"host=db.internal password=s3cret port=abc",
	} {
		_, err := pgconn.ParseConfig(dsn)
		if err == nil {
			t.Fatalf("%s parsed", dsn)
		}
		got := secret.ParseError(err)
		msg := got.Error()
		pw := secret.Password(dsn)
		if pw == "" || strings.Contains(msg, pw) || strings.Contains(msg, "s3c") || strings.Contains(msg, "cr@t") {
			t.Errorf("%s: message %q shows (part of) the password %q", dsn, msg, pw)
		}
		if !strings.HasPrefix(msg, "cannot parse the connection string: ") {
			t.Errorf("%s: message %q", dsn, msg)
		}
		var pce *pgconn.ParseConfigError
		if errors.As(got, &pce) {
			t.Errorf("%s: the ParseConfigError, which holds the raw string, is still reachable", dsn)
		}
	}
}

func TestWithoutPassword(t *testing.T) {
	for _, tc := range []struct{ dsn, password string }{
		{"postgres://app:s3cret@127.0.0.1:5432/orders?sslmode=disable", "s3cret"},
		{"postgres://app@127.0.0.1/orders?password=s3cret&sslmode=disable", "s3cret"},
		{"postgres://app:p%40ss%2Fw@127.0.0.1/orders", "p@ss/w"},
		{"host=127.0.0.1 user=app password='it''s s3cret' dbname=orders", ""},
		{`host=127.0.0.1 user=app password='it\'s s3cret' dbname=orders`, "it's s3cret"},
		{"host=127.0.0.1 user=app password=s3cret dbname=orders", "s3cret"},
		{"postgres://app@127.0.0.1/orders", ""},
	} {
		stripped, pw, err := secret.WithoutPassword(tc.dsn)
		if tc.password == "" && strings.Contains(tc.dsn, "''") {
			// libpq does not double quotes; pgx refuses the string, and so do we.
			if err == nil {
				t.Errorf("%s: accepted", tc.dsn)
			}
			continue
		}
		if err != nil {
			t.Fatalf("%s: %v", tc.dsn, err)
		}
		if pw != tc.password {
			t.Errorf("%s: password %q, want %q", tc.dsn, pw, tc.password)
		}
		if tc.password != "" && strings.Contains(stripped, "s3cret") {
			t.Errorf("%s: stripped %q still has the password", tc.dsn, stripped)
		}
		cfg, err := pgconn.ParseConfig(stripped)
		if err != nil {
			t.Fatalf("%s: stripped %q does not parse: %v", tc.dsn, stripped, err)
		}
		if cfg.Password != "" || cfg.User != "app" || cfg.Database != "orders" || cfg.Host != "127.0.0.1" {
			t.Errorf("%s: stripped %q parses to user %q db %q host %q password %q", tc.dsn, stripped, cfg.User, cfg.Database, cfg.Host, cfg.Password)
		}
	}
}
